"""A real `redis-server` for tests: on a free port, in a temporary folder, that a test can stop,
start again (with its data when persistence is on, empty when it is off) and ask for INFO."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.ports import reusable_port

REDIS_SERVER = shutil.which("redis-server")
MISSING_REASON = ("redis-server is not installed (`make test` installs it with apt-get: "
                  "apt-get install -y redis-server)")


class RedisServer:
    def __init__(self, folder: Path, *, persistence: bool = True, port: int | None = None) -> None:
        assert REDIS_SERVER, MISSING_REASON
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or reusable_port()  # restarted on the same port after an outage
        self.persistence = persistence
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, persistence: bool | None = None, wipe: bool = False) -> RedisServer:
        """Start (again) on the same port; `wipe` removes its data files first."""
        if persistence is not None:
            self.persistence = persistence
        if wipe:
            for item in self.folder.iterdir():
                if item.is_dir():
                    shutil.rmtree(item)
                else:
                    item.unlink()
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--daemonize", "no", "--save", "", "--logfile", str(self.folder / "redis.log"),
                "--protected-mode", "yes"]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistence \
            else ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping():
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        log = (self.folder / "redis.log").read_text() if (self.folder / "redis.log").exists() else ""
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def command(self, *args: str) -> bytes:
        """One command in RESP over a plain socket (no client library between test and server)."""
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(str(arg).encode())}\r\n".encode() + str(arg).encode() + b"\r\n" for arg in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(payload)
            data = b""
            while True:
                chunk = sock.recv(65536)
                data += chunk
                if not chunk or _complete(data):
                    return data

    def ping(self) -> bool:
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False

    def info(self, section: str = "stats") -> dict[str, str]:
        text = self.command("INFO", section).decode()
        return dict(line.split(":", 1) for line in text.splitlines()[1:] if ":" in line)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _complete(data: bytes) -> bool:
    if data[:1] in (b"+", b"-", b":"):
        return data.endswith(b"\r\n")
    if data[:1] == b"$":
        header, _, rest = data.partition(b"\r\n")
        size = int(header[1:])
        return size < 0 or len(rest) >= size + 2
    return data.endswith(b"\r\n")
