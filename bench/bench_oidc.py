"""Trust off App Engine: what checking Cloud Tasks' OIDC token costs ``taskutils.app`` per task.

Run by ``bench/run.py`` (``--only oidc``). Both sides run the same unsigned task through
``taskutils.app`` on the cloud backend, in alternating rounds in this one process: one with a
``target``, so each request's ``Authorization: Bearer`` ID token is verified (RS256, minted
with a local key whose certs a loopback server publishes, fetched once and cached), the other
without one (App Engine routing: App Engine's headers decide, as on App Engine). The main row
sends the same token with every task, as a queue does within a token's hour; the information
row mints a new token per task, so every request pays an RSA verify.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from run import ARGS, KWARGS, Batch, Bench, NonSeekable, Result, compare, measure

import taskutils

import benchwork

TARGET = "https://worker-abc.a.run.app"
SENDER = "tasks@bench-project.iam.gserviceaccount.com"
KID = "bench-kid"
NUMBER = 300


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _Certs:
    """A JWKS with one RSA key on 127.0.0.1, in a thread; mints tokens Google's way with that key."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.key.public_key().public_numbers()
        jwk = {"kid": KID, "kty": "RSA", "alg": "RS256", "use": "sig", "n": _b64(numbers.n.to_bytes(256, "big"))}
        jwk["e"] = _b64(numbers.e.to_bytes(3, "big"))
        document = json.dumps({"keys": [jwk]}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/oauth2/v3/certs"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.serial = 0

    def token(self) -> str:
        self.serial += 1
        now = int(time.time())
        claims = {
            "aud": TARGET,
            "email": SENDER,
            "email_verified": True,
            "exp": now + 3600,
            "iat": now,
            "iss": "https://accounts.google.com",
            "sub": str(self.serial),
        }
        head = _b64(json.dumps({"alg": "RS256", "kid": KID, "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims).encode())
        signature = self.key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{head}.{body}.{_b64(signature)}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def rows(bench: Bench) -> list[Result]:
    """The token rows, on bench's activated testbed (which only builds the task's request)."""
    taskutils.configure(secret_keys=[])
    task = benchwork.work_task(*ARGS, **KWARGS)
    bench.flush()
    template, body = bench.environ_for(task), task.payload
    cloud_tasks = {k: v for k, v in template.items() if not k.startswith("HTTP_X_APPENGINE_")}
    cloud_tasks.update(
        HTTP_X_CLOUDTASKS_QUEUENAME="default",
        HTTP_X_CLOUDTASKS_TASKNAME=task.name,
        HTTP_X_CLOUDTASKS_TASKRETRYCOUNT="0",
        HTTP_X_CLOUDTASKS_TASKEXECUTIONCOUNT="0",
        HTTP_X_CLOUDTASKS_TASKETA="1700000000.0",
    )
    certs = _Certs()
    statuses: list[str] = []

    def start_response(status: str, headers: Sequence[tuple[str, str]], exc_info: Any = None) -> None:
        statuses.append(status)

    def batch(environ: dict[str, Any], target: str | None, fresh_tokens: bool = False) -> Batch:
        same = certs.token()

        def run(n: int) -> float:
            taskutils.configure(target=target)
            tokens = [certs.token() if fresh_tokens else same for _ in range(n)]
            environs = [
                {**environ, "HTTP_AUTHORIZATION": f"Bearer {token}", "wsgi.input": NonSeekable(body)}
                for token in tokens
            ]
            statuses.clear()
            t = time.perf_counter()
            for env in environs:
                b"".join(taskutils.app(env, start_response))
            elapsed = time.perf_counter() - t
            if statuses[-1] != "200 OK" or len(statuses) != n:
                raise RuntimeError(f"taskutils.app answered {statuses[-1]} (target={target})")
            return elapsed

        return run

    from taskutils.backends import cloud_store

    # Each task runs in a Cloud NDB context, as in production, where the client finds credentials
    # once: an emulator address (never called here) stands in for them.
    saved = os.environ.get("DATASTORE_EMULATOR_HOST")
    os.environ["DATASTORE_EMULATOR_HOST"] = "127.0.0.1:9"
    cloud_store.reset_client()
    taskutils.configure(backend="cloud", service_account=SENDER, oidc_certs_url=certs.url)
    try:
        headers_side = batch(template, None)
        times = measure(
            {"token": batch(cloud_tasks, TARGET), "headers": headers_side}, bench.rounds, NUMBER, bench.flush
        )
        results = [
            compare(
                "`taskutils.app` per task, OIDC token checked / App Engine headers (cloud backend)",
                times,
                "token",
                "headers",
                NUMBER,
                1.2,
                "token checked",
                "headers",
            )
        ]
        fresh = batch(cloud_tasks, TARGET, fresh_tokens=True)
        times = measure({"fresh": fresh, "headers": headers_side}, bench.rounds, NUMBER // 3, bench.flush)
        results.append(
            compare(
                "`taskutils.app` per task, a new OIDC token each (one RSA verify) / App Engine headers",
                times,
                "fresh",
                "headers",
                NUMBER // 3,
                None,
                "new token checked",
                "headers",
            )
        )
    finally:
        taskutils.configure(backend="appengine", target=None, service_account=None, oidc_certs_url=None, secret_keys=[])
        if saved is None:
            os.environ.pop("DATASTORE_EMULATOR_HOST", None)
        else:
            os.environ["DATASTORE_EMULATOR_HOST"] = saved
        cloud_store.reset_client()
        certs.stop()
    return results


if __name__ == "__main__":
    import logging

    from run import table

    logging.disable(logging.CRITICAL)
    quick = "--quick" in sys.argv
    bench = Bench(9 if quick else 41)
    try:
        print(table(rows(bench)))
    finally:
        bench.bed.deactivate()
