# classguard in a slim image (docs/deploy.md). Two stages: the first builds classguard's wheel from
# exactly the package set of pyproject.toml; the second installs that wheel with the versions
# pinned in constraints.txt (the same file `make install` and CI use) and nothing else.
# Build: docker build --build-arg COMMIT="$(git rev-parse --short=12 HEAD)" -t classguard .
# tests/test_deploy.py copies what this stage copies and runs its build step (CI has no Docker).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
# Every package of pyproject.toml's [tool.setuptools] packages (docs/architecture.md).
COPY classguard ./classguard
COPY dashboard ./dashboard
COPY admin ./admin
COPY privacy ./privacy
COPY resolver ./resolver
COPY store ./store
COPY policies ./policies
COPY blocklists ./blocklists
COPY common ./common
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ARG COMMIT=""
COPY --from=build /wheels /tmp/wheels
COPY --from=build /src/constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir --constraint /tmp/constraints.txt /tmp/wheels/classguard-*.whl \
 && rm -rf /tmp/wheels /tmp/constraints.txt \
 # Ports 53 and 853 without running as root: the capability on the interpreter only.
 && apt-get update \
 && apt-get install --no-install-recommends -y libcap2-bin \
 && setcap cap_net_bind_service=+ep "$(readlink -f "$(command -v python3)")" \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --home-dir /var/lib/classguard --no-create-home classguard \
 && mkdir -p /var/lib/classguard /etc/classguard \
 && chown classguard:classguard /var/lib/classguard && chmod 0750 /var/lib/classguard
# The image's own configuration: DNS on every address of the container, the state in the
# volume. Mount yours over it (deploy/docker-compose.yml) or set CLASSGUARD_* variables
# (docs/configuration.md, "Environment").
COPY deploy/image.yaml /etc/classguard/classguard.yaml
ENV CLASSGUARD_CONFIG=/etc/classguard/classguard.yaml \
    CLASSGUARD_COMMIT=${COMMIT}
VOLUME /var/lib/classguard
USER classguard
WORKDIR /var/lib/classguard
# DNS (UDP, TCP), DoT (853, what Android uses), DoH (doh.listen's default), the dashboard
# (dashboard.listen's default) and metrics (the documented 9153): each off until configured.
EXPOSE 53/udp 53/tcp 853/tcp 8053/tcp 8080/tcp 9153/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s CMD ["python3", "-m", "classguard.healthcheck"]
ENTRYPOINT ["classguard"]
CMD ["serve"]
