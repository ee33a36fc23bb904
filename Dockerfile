# classguard in a slim image: the same install step as the README (pip install of this project).
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install --no-install-recommends -y libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/classguard --create-home classguard

WORKDIR /opt/classguard
COPY pyproject.toml README.md ./
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
RUN pip install --no-cache-dir . \
 # Ports 53 and 853 without running as root: the capability on the interpreter only.
 && setcap cap_net_bind_service=+ep "$(readlink -f "$(command -v python3)")"

USER classguard
WORKDIR /var/lib/classguard
EXPOSE 53/udp 53/tcp 853/tcp 443/tcp
# Without a config file classguard listens on 127.0.0.1:1053; mount a config and set
# CLASSGUARD_CONFIG (with dns.listen: ["0.0.0.0:53"]) for a real deployment.
ENV CLASSGUARD_CONFIG=""
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s CMD ["python3", "-m", "classguard.healthcheck"]
ENTRYPOINT ["classguard"]
CMD ["serve"]
