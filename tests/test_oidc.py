"""Off App Engine, a task runs only with an OIDC token Google signed for an allowed sender.

The Cloud Tasks emulator attaches no token, so these tests mint tokens with local RSA keys
and serve their certs from a loopback HTTP server, in both formats Google publishes (the
PEM map of oauth2/v1/certs, the JWKS of oauth2/v3/certs). Each request goes through the
real handler; a refused one must leave the canary (a pickle whose loading creates a file)
untouched.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.server
import json
import logging
import pathlib
import pickle
import secrets
import threading
import time
from typing import Any

import pytest
import webtest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

import taskutils
from taskutils import codec
from taskutils.config import KeyRing

import tasklib

KEY = "test-key-one"
RECORD = "/_ah/task/tasklib/record"
TARGET = "https://worker-abc.a.run.app"
SENDER = "tasks@my-project.iam.gserviceaccount.com"
CLOUD_TASKS_HEADERS = {
    "X-CloudTasks-QueueName": "default",
    "X-CloudTasks-TaskName": "task-42",
    "X-CloudTasks-TaskRetryCount": "3",
}


class Canary:
    """Unpickling this creates a file: the proof that a body reached the unpickler."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


class CanaryFile:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.pickle = pickle.dumps(((Canary(path),), {}), pickle.HIGHEST_PROTOCOL)  # a by-URL call: (args, kwargs)

    def body(self) -> bytes:
        """The canary framed as taskutils frames a task to RECORD, signed with KEY."""
        return codec.frame(RECORD, self.pickle, codec.BY_URL, KeyRing([KEY]))

    def fired(self) -> bool:
        return self.path.exists()


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEYS = {"kid-one": _key(), "kid-two": _key()}
OTHER_KEY = _key()  # in no certs


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _pem_cert(key: rsa.RSAPrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-oidc")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _jwk(kid: str, key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    return {"kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig", "n": _b64(n), "e": _b64(e)}


def certs_document(kids: list[str], form: str) -> dict[str, Any]:
    if form == "pem":
        return {kid: _pem_cert(KEYS[kid]) for kid in kids}
    return {"keys": [_jwk(kid, KEYS[kid]) for kid in kids]}


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    found = {
        "aud": TARGET,
        "azp": "1234567890",
        "email": SENDER,
        "email_verified": True,
        "exp": now + 3600,
        "iat": now,
        "iss": "https://accounts.google.com",
        "sub": "1234567890",
    }
    found.update(changes)
    return {k: v for k, v in found.items() if v is not None}


def mint(payload: dict[str, Any] | None = None, *, kid: str = "kid-one", key: rsa.RSAPrivateKey | None = None) -> str:
    """An ID token shaped as Google's, RS256-signed with KEYS[kid] (or key)."""
    head = _b64(json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims() if payload is None else payload).encode())
    signing_key = key or KEYS[kid]
    signature = signing_key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{_b64(signature)}"


class CertsServer:
    """The certs on 127.0.0.1, in a thread; counts the fetches."""

    def __init__(self, document: dict[str, Any], max_age: int = 3600, status: int = 200) -> None:
        self.document, self.max_age, self.status = document, max_age, status
        self.fetches = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.fetches += 1
                data = json.dumps(owner.document).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", f"public, max-age={owner.max_age}, must-revalidate, no-transform")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A path of its own: the process keeps certs per URL, and a later test's server may
        # get an earlier one's port, whose certs would then count as fetched already.
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{secrets.token_hex(8)}/oauth2/v1/certs"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.05,), name="test-oidc-certs", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(params=["pem", "jwks"])
def certs(request):
    """Certs holding kid-one, in the format of oauth2/v1/certs or oauth2/v3/certs, served on loopback."""
    server = CertsServer(certs_document(["kid-one"], request.param))
    server.form = request.param
    yield server
    server.stop()


def _cloud(url: str, **more: Any) -> None:
    taskutils.configure(
        backend="cloud", target=TARGET, service_account=SENDER, oidc_certs_url=url, secret_keys=[KEY], **more
    )


@pytest.fixture
def cloud(certs):
    """The cloud backend with an HTTP target, its tokens checked against the loopback certs."""
    _cloud(certs.url)
    yield certs
    taskutils.configure(
        backend="appengine",
        target=None,
        service_account=None,
        audience=None,
        allowed_senders=None,
        oidc_certs_url=None,
    )


@pytest.fixture
def client():
    return webtest.TestApp(taskutils.app)


@pytest.fixture
def canary(tmp_path):
    return CanaryFile(tmp_path / "canary-was-unpickled")


def post(client, body: bytes, token: str | None = None, url: str = RECORD, headers: dict | None = None) -> int:
    sent = dict(CLOUD_TASKS_HEADERS if headers is None else headers)
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    response = client.post(
        url,
        body,
        headers=sent,
        extra_environ={"REMOTE_ADDR": "169.254.1.1"},
        content_type="application/octet-stream",
        expect_errors=True,
    )
    return response.status_int


@pytest.fixture
def refused(client, canary, caplog):
    """refused(token, why): the request gets 403, nothing is unpickled, and the log line says why."""
    caplog.set_level(logging.WARNING, logger="taskutils")

    def check(token: str | None, why: str, headers: dict | None = None) -> bool:
        caplog.clear()
        status = post(client, canary.body(), token, headers=headers)
        assert why in caplog.text
        return status == 403 and not canary.fired()

    return check


# The positive control.


def test_a_good_token_runs_the_task(cloud, client, canary):
    assert post(client, canary.body(), mint()) == 200
    assert canary.fired()


def test_a_good_token_with_the_older_issuer_spelling_runs_the_task(cloud, client, canary):
    assert post(client, canary.body(), mint(claims(iss="accounts.google.com"))) == 200
    assert canary.fired()


def test_a_task_reads_cloud_tasks_headers_as_its_task_info(cloud, client):
    body = codec.frame("/_ah/task/tasklib/where_am_i", codec.dumps(((), {})), codec.BY_URL, KeyRing([KEY]))

    assert post(client, body, mint(), url="/_ah/task/tasklib/where_am_i") == 200
    info = tasklib.ran[-1]
    assert (info.task_name, info.queue_name, info.retry_count) == ("task-42", "default", 3)


# What a token must prove.


def test_a_request_without_a_token_is_refused(cloud, refused):
    assert refused(None, "no Authorization header")


def test_app_engine_headers_prove_nothing_off_app_engine(cloud, refused):
    headers = {"X-AppEngine-TaskName": "task7", "X-AppEngine-QueueName": "default", **CLOUD_TASKS_HEADERS}

    assert refused(None, "no Authorization header", headers=headers)


@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer not-a-jwt", "Bearer a.b.c", "Bearer ..", "Basic dXNlcjpwYXNz", "Bearer e30.e30.e30.e30"],
)
def test_a_malformed_token_is_refused(cloud, refused, authorization):
    headers = {**CLOUD_TASKS_HEADERS, "Authorization": authorization}

    assert refused(None, "OIDC token: ", headers=headers)


def test_a_token_for_another_audience_is_refused(cloud, refused):
    assert refused(mint(claims(aud="https://someone-else.a.run.app")), "audience")


def test_the_audience_can_be_set_apart_from_the_target(cloud, client, canary, refused):
    taskutils.configure(audience="https://tasks.example.com")

    assert refused(mint(), "audience")
    assert post(client, canary.body(), mint(claims(aud="https://tasks.example.com"))) == 200


@pytest.mark.parametrize("issuer", ["https://evil.example.com", ["https://accounts.google.com"]])
def test_a_token_from_another_issuer_is_refused(cloud, refused, issuer):
    assert refused(mint(claims(iss=issuer)), "issuer")


def test_a_token_for_a_sender_not_allowed_is_refused(cloud, refused):
    assert refused(mint(claims(email="someone@gmail.com")), "not an allowed sender")


def test_allowed_senders_replace_the_service_account(cloud, client, canary, refused):
    taskutils.configure(allowed_senders=["other@my-project.iam.gserviceaccount.com"])

    assert refused(mint(), "not an allowed sender")
    assert post(client, canary.body(), mint(claims(email="other@my-project.iam.gserviceaccount.com"))) == 200


@pytest.mark.parametrize("verified", [False, "false", None], ids=["false", "string-false", "missing"])
def test_a_token_whose_email_is_not_verified_is_refused(cloud, refused, verified):
    assert refused(mint(claims(email_verified=verified)), "not verified")


def test_an_expired_token_is_refused(cloud, refused):
    now = int(time.time())

    assert refused(mint(claims(iat=now - 3700, exp=now - 60)), "expired")


@pytest.mark.parametrize("exp", [float("nan"), float("inf"), "never", None], ids=["nan", "inf", "string", "missing"])
def test_a_token_without_a_finite_expiry_is_refused(cloud, refused, exp):
    assert refused(mint(claims(exp=exp)), "no numeric exp")


def test_a_token_issued_in_the_future_is_refused(cloud, refused):
    now = int(time.time())

    assert refused(mint(claims(iat=now + 120, exp=now + 3720)), "in the future")


def test_a_token_signed_by_another_key_is_refused(cloud, refused):
    assert refused(mint(kid="kid-one", key=OTHER_KEY), "signature does not verify")


def test_a_token_with_alg_none_is_refused(cloud, refused):
    head = _b64(json.dumps({"alg": "none", "kid": "kid-one", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims()).encode())

    assert refused(f"{head}.{body}.", "only RS256")


def test_a_token_with_alg_hs256_keyed_with_the_public_cert_is_refused(cloud, refused):
    public = json.dumps(cloud.document).encode()  # what an attacker can read: the certs themselves
    head = _b64(json.dumps({"alg": "HS256", "kid": "kid-one", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims()).encode())
    signature = hmac.new(public, f"{head}.{body}".encode(), hashlib.sha256).digest()

    assert refused(f"{head}.{body}.{_b64(signature)}", "only RS256")


def test_a_token_with_an_unknown_kid_is_refused(cloud, refused):
    assert refused(mint(kid="kid-two"), "not in the certs")  # kid-two is not (yet) in the certs


def test_a_tampered_body_is_refused_even_with_a_good_token(cloud, client, canary):
    body = bytearray(canary.body())
    body[-2] ^= 1

    assert post(client, bytes(body), mint()) == 403
    assert not canary.fired()


def test_a_refusal_logs_why_and_never_the_token(cloud, refused, caplog):
    caplog.set_level(logging.WARNING, logger="taskutils")
    token = mint(claims(aud="https://someone-else.a.run.app"))

    assert refused(token, "audience")
    text = caplog.text
    assert "audience" in text and "someone-else" in text
    assert token not in text and token.split(".")[2] not in text


# Certs: cached, rotated, unreachable.


def test_certs_are_fetched_once_while_their_max_age_lasts(cloud, client, canary):
    for _ in range(5):
        assert post(client, canary.body(), mint(claims(sub=str(time.monotonic())))) == 200
    assert cloud.fetches == 1


def test_certs_with_no_max_age_left_are_fetched_again(cloud, client, canary):
    cloud.max_age = 0

    for _ in range(3):
        assert post(client, canary.body(), mint()) == 200
    assert cloud.fetches == 3


def test_a_key_rotated_into_the_certs_is_picked_up(cloud, client, canary):
    assert post(client, canary.body(), mint()) == 200
    cloud.document = certs_document(["kid-one", "kid-two"], cloud.form)

    assert post(client, canary.body(), mint(kid="kid-two")) == 200
    assert cloud.fetches == 2


def test_a_flood_of_unknown_kids_fetches_the_certs_at_most_once_more(cloud, client, canary):
    assert post(client, canary.body(), mint()) == 200

    statuses = {post(client, canary.body(), mint(kid=f"made-up-{n}", key=OTHER_KEY)) for n in range(20)}
    assert statuses == {403}
    assert cloud.fetches <= 2


def test_unreachable_certs_answer_500_so_the_task_is_retried_without_slowing_the_queue(client, canary, tmp_path):
    server = CertsServer({"error": "unavailable"}, status=500)
    try:
        _cloud(server.url)
        statuses = [post(client, canary.body(), mint()) for _ in range(3)]
    finally:
        server.stop()
        taskutils.configure(backend="appengine", target=None, service_account=None, oidc_certs_url=None)
    assert statuses == [500, 500, 500]  # not 503 or 429: those throttle the whole queue
    assert not canary.fired()
    assert server.fetches == 1  # a dead certs URL is not asked again on every task


# Without a target, App Engine routing: App Engine's own headers still decide.


def test_without_a_target_app_engine_headers_are_trusted_as_on_app_engine(client, canary):
    taskutils.configure(backend="cloud", target=None, secret_keys=[KEY])
    try:
        app_engine = {"X-AppEngine-TaskName": "task7", "X-AppEngine-QueueName": "default"}
        assert post(client, canary.body(), headers=CLOUD_TASKS_HEADERS) == 403
        assert post(client, canary.body(), headers=app_engine) == 200
    finally:
        taskutils.configure(backend="appengine")
    assert canary.fired()


def test_a_token_accepted_before_is_refused_once_its_sender_is_no_longer_allowed(cloud, client, canary, refused):
    token = mint()
    assert post(client, canary.body(), token) == 200
    canary.path.unlink()
    taskutils.configure(allowed_senders=["other@my-project.iam.gserviceaccount.com"])

    assert refused(token, "not an allowed sender")


def test_a_token_accepted_before_is_refused_once_its_key_left_the_certs(cloud, client, canary, refused):
    cloud.max_age = 0
    token = mint()
    assert post(client, canary.body(), token) == 200
    canary.path.unlink()
    cloud.document = certs_document(["kid-two"], cloud.form)

    assert refused(token, "not in the certs")


def test_a_made_up_kid_while_the_certs_are_down_does_not_void_the_keys_already_fetched(cloud, client, canary):
    assert post(client, canary.body(), mint()) == 200
    cloud.status = 500

    assert post(client, canary.body(), mint(kid="made-up", key=OTHER_KEY)) == 500
    assert post(client, canary.body(), mint(claims(sub="another"))) == 200


class Untouchable:
    """A request body that fails the test if anything reads it."""

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the body was read before the token was checked")


def test_the_body_is_not_read_before_the_token_is_checked(cloud):
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": RECORD,
        "CONTENT_LENGTH": "100",
        "CONTENT_TYPE": "application/octet-stream",
        "HTTP_AUTHORIZATION": "Bearer " + mint(claims(aud="https://someone-else.a.run.app")),
        "HTTP_X_CLOUDTASKS_QUEUENAME": "default",
        "wsgi.input": Untouchable(),
    }
    statuses = []

    b"".join(taskutils.app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses == ["403 Forbidden"]


# The periodic jobs' cron route: off App Engine, X-Appengine-Cron is anyone's to send.


def test_with_a_target_the_cron_route_needs_an_allowed_senders_token_not_app_engines_header(cloud, monkeypatch):
    from taskutils.controls import jobs as declared

    monkeypatch.setattr(declared, "_jobs", {})  # no job due: a request let in adds nothing, and answers so
    app = webtest.TestApp(taskutils.mount(lambda env, start: []))

    def get(headers: dict[str, str]) -> tuple[int, str]:
        response = app.get("/cron/taskutils-periodic", headers=headers, expect_errors=True)
        return response.status_int, response.text

    assert get({"X-Appengine-Cron": "true"}) == (403, "cron requests only\n")
    assert get({"Authorization": f"Bearer {mint(claims(email='someone@gmail.com'))}"})[0] == 403
    assert get({"Authorization": f"Bearer {mint()}"}) == (200, "added 0\n")


def test_with_a_target_the_sweep_app_needs_an_allowed_senders_token_not_app_engines_header(cloud, monkeypatch):
    import sys

    swept: list[object] = []  # the sweep itself (Cloud Datastore) is tested in test_cloud_store.py
    monkeypatch.setattr(sys.modules["taskutils.sweep"], "sweep", lambda older_than: swept.append(older_than) or 0)
    app = webtest.TestApp(taskutils.sweep_app)

    def get(headers: dict[str, str]) -> tuple[int, str]:
        response = app.get("/cron/taskutils-sweep", headers=headers, expect_errors=True)
        return response.status_int, response.text

    assert get({"X-Appengine-Cron": "true"}) == (403, "cron requests only\n")
    assert get({"Authorization": f"Bearer {mint(claims(email='someone@gmail.com'))}"})[0] == 403
    assert swept == []
    assert get({"Authorization": f"Bearer {mint()}"}) == (200, "deleted 0\n")
    assert len(swept) == 1


# Cloud Run without a target: tasks would be App Engine tasks, whose headers anyone can send there.


def test_on_cloud_run_without_a_target_every_task_is_refused_before_anything_is_unpickled(
    client, canary, monkeypatch, caplog
):
    monkeypatch.setenv("K_SERVICE", "worker")  # what Cloud Run sets in every instance
    taskutils.configure(backend="cloud", target=None, service_account=None, secret_keys=[KEY])
    app_engine_task = {"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "task-42"}
    try:
        assert post(client, canary.body(), headers=app_engine_task) == 403
        assert not canary.fired()
        assert "on Cloud Run tasks need a target" in caplog.text

        monkeypatch.delenv("K_SERVICE")  # the same app under serve or the test fixture: App Engine routing
        assert post(client, canary.body(), headers=app_engine_task) == 200
        assert canary.fired()
    finally:
        taskutils.configure(backend="appengine")
