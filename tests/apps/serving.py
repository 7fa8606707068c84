"""Run ``python -m taskutils serve`` as a user would: a subprocess on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

APPS = Path(__file__).resolve().parent


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nothing_listens_on(port: int) -> bool:
    """True when a connection to the port is refused."""
    with socket.socket() as s:
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        return False


class ServeProcess:
    """``python -m taskutils serve SPEC --port P ...`` with tests/apps on the path, its output in a file."""

    def __init__(
        self, spec: str, log_path: Path, *args: str, env: dict[str, str] | None = None, cwd: Path = APPS
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        environ = {**os.environ, "PYTHONPATH": str(APPS), **(env or {})}
        for name in ("TASKUTILS_SECRET_KEYS", "APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", "GAE_ENV"):
            if name not in (env or {}):
                environ.pop(name, None)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "taskutils",
                    "serve",
                    spec,
                    "--port",
                    str(self.port),
                    "--exit-with-parent",
                    *args,
                ],
                cwd=cwd,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, Any]:
        """Send one request; return the status and the decoded JSON body (or raw bytes)."""
        data = body if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, (status, body, self.log())
        return body

    def post(self, path: str) -> Any:
        status, body = self.request("POST", path)
        assert status == 200, (status, body, self.log())
        return body

    def wait_ready(self, path: str = "/", timeout: float = 60.0) -> ServeProcess:
        """Poll until this serve process answers HTTP at all.

        It must have said it serves on its port: the port was free when picked, but another
        process (an emulator, a browser) may have bound it since, and would answer instead.
        """
        deadline = time.monotonic() + timeout
        serving = f"on {self.base}"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.request("GET", path, timeout=5)
                if serving in self.log():
                    return self
                raise ConnectionRefusedError(f"no 'serving ... {serving}' line yet")
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"serve did not answer in {timeout}s:\n{self.log()}") from None
                time.sleep(0.05)

    def wait_for(self, done: Any, what: str, timeout: float = 30.0, every: float = 0.05) -> Any:
        """Poll done() until it returns something truthy; fail with the server's log if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            result = done()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not done after {timeout}s\n--- serve log:\n{self.log()[-6000:]}")
            time.sleep(every)

    def interrupt(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        """Send sig (Ctrl-C by default) and return the exit code."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop it whatever state it is in: Ctrl-C, then kill."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
