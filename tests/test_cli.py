"""``python -m taskutils serve``: what its command line refuses, and how it says so."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskutils", "serve", "taskutils.demo:app", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (("--port", "99999"), "expected a port from 0 to 65535"),
        (("--port", "-1"), "expected a port from 0 to 65535"),
        (("--threads", "0"), "expected a number of threads, at least 1"),
        (("--concurrency", "0"), "expected a number of tasks, at least 1"),
    ],
)
def test_an_option_out_of_range_is_refused_before_anything_starts(args, message):
    done = serve(*args)

    assert done.returncode == 2
    assert message in done.stderr


def test_an_address_that_cannot_be_bound_is_one_line_without_a_traceback():
    done = serve("--host", "0.0.0.0x", "--port", "0")

    assert done.returncode == 2
    assert "taskutils serve: cannot start: gaierror" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_busy_port_is_named_in_one_line_without_a_traceback():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        done = serve("--port", str(port))

    assert done.returncode == 2
    assert f"cannot bind 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "--port 0 picks a free port" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_app_that_fails_to_import_shows_its_own_traceback(tmp_path):
    (tmp_path / "broken.py").write_text("import json\n\nconfig = json.loads('{not json')\n")

    done = subprocess.run(
        [sys.executable, "-m", "taskutils", "serve", "broken:app", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )

    assert done.returncode == 2
    assert "Traceback" in done.stderr and 'broken.py", line 3' in done.stderr
    assert "cannot start: JSONDecodeError" in done.stderr
