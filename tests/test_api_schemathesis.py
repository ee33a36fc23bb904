"""Schemathesis against the REST API: requests generated from /api/v1/openapi.json, sent to a real
`classguard serve`, as an admin token and as a teacher's session. No answer may be a 500, have a
status the document does not list for its operation, or disagree with its documented content
type and schema. Bounded: a few examples per operation, derandomized (the same run every time).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance, not_a_server_error, response_headers_conformance,
    response_schema_conformance, status_code_conformance,
)

from dashboard.openapi import document
from tests.serving import CLASSGUARD, free_port, write_school

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
EXAMPLES = 6  # per operation and identity: the whole run stays well under a minute
PASSWORD = "a long enough password"

schema = schemathesis.openapi.from_dict(document())
RUN = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
               suppress_health_check=list(HealthCheck))


@dataclass
class Api:
    base: str
    admin: dict[str, str]
    teacher: dict[str, str]


def _cli(folder, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([CLASSGUARD, *args], cwd=folder, input=stdin, text=True,
                            capture_output=True, timeout=60,
                            env={**os.environ, "CLASSGUARD_CONFIG": ""})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    folder = tmp_path_factory.mktemp("school")
    write_school(folder, "udp://127.0.0.1:9")  # no upstream needed: nothing here is forwarded
    port = free_port()
    with open(folder / "classguard.yaml", "a") as config:
        config.write(f"dashboard: {{listen: \"127.0.0.1:{port}\"}}\n")
    token = _cli(folder, "token", "create", "schemathesis").strip()
    _cli(folder, "user", "add", "tom", "--role", "teacher", "--class", "pupils",
         "--password-stdin", stdin=PASSWORD + "\n")
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([CLASSGUARD, "serve"], cwd=folder, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env={**os.environ, "CLASSGUARD_CONFIG": ""})
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.stdout.read().decode()
            try:
                if requests.get(base + "/api/v1/openapi.json", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the dashboard did not come up"
            time.sleep(0.1)
        served = requests.get(base + "/api/v1/openapi.json", timeout=5).json()
        assert served == schema.raw_schema  # the run checks what the server says of itself
        login = requests.post(base + "/api/v1/login", json={"name": "tom", "password": PASSWORD},
                              timeout=5)
        assert login.status_code == 200, login.text
        teacher = {"Cookie": f"classguard_session={login.cookies['classguard_session']}",
                   "X-CSRF-Token": login.json()["csrf_token"]}
        yield Api(base, {"Authorization": f"Bearer {token}"}, teacher)
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=15)
    text = output.decode()
    assert server.returncode == 0 and "Traceback" not in text, text


@schema.parametrize()
@RUN
def test_as_an_admin_token(case, api):
    case.call_and_validate(base_url=api.base, headers=api.admin, checks=CHECKS, timeout=10)


# The teacher's session must live through the run: logging out is the admin run's to try.
@schema.exclude(path="/api/v1/logout").parametrize()
@RUN
def test_as_a_teacher_session(case, api):
    case.call_and_validate(base_url=api.base, headers=api.teacher, checks=CHECKS, timeout=10)
