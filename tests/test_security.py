"""Nothing reaches the unpickler unless it provably came from this app's own queue.

Every test posts to the real handler a canary: a pickle whose loading creates a
file. A refused request must get a 4xx and leave no file behind. Positive
controls show that the canary does fire whenever a body is accepted.
"""

import hashlib
import io
import json
import logging
import os
import pathlib
import pickle
from unittest import mock

import pytest
import webtest
from google.appengine.ext import ndb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taskutils
from taskutils import codec, spill
from taskutils.config import KeyRing
from taskutils.handler import MAX_BODY, TASKQUEUE_SOURCE

import tasklib

KEY = "test-key-one"  # what the conftest's `signed` fixture configures
OLD_KEY = "an-old-key-rotated-out"
RECORD = "/_ah/task/tasklib/record"
CRASH = "/_ah/task/tasklib/crash"
TASK_HEADERS = {"X-AppEngine-TaskName": "task7", "X-AppEngine-QueueName": "default"}
PROD = {"GAE_ENV": "standard"}


class Canary:
    """Unpickling this creates a file: the proof that a body reached the unpickler."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


class CanaryFile:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        # A plausible call for a by-URL task: (args, kwargs), the canary as argument 0.
        self.pickle = pickle.dumps(((Canary(path),), {}), pickle.HIGHEST_PROTOCOL)

    def body(self, url: str = RECORD, keys: tuple[str, ...] = (KEY,), flags: int = codec.BY_URL) -> bytes:
        """The canary framed as the queue would frame it, signed with keys[0] for url."""
        return codec.frame(url, self.pickle, flags, KeyRing(keys))

    def fired(self) -> bool:
        return self.path.exists()


@pytest.fixture
def canary(tmp_path):
    return CanaryFile(tmp_path / "canary-was-unpickled")


@pytest.fixture
def client(task_testbed):
    return webtest.TestApp(taskutils.app)


def post(client, url, body, headers=TASK_HEADERS, remote=TASKQUEUE_SOURCE) -> int:
    response = client.post(
        url,
        body,
        headers=headers,
        extra_environ={"REMOTE_ADDR": remote},
        content_type="application/octet-stream",
        expect_errors=True,
    )
    return response.status_int


# Positive controls: the canary is live.


def test_the_canary_fires_when_its_body_is_signed_with_a_key_in_the_ring(client, canary, signed):
    assert post(client, RECORD, canary.body()) == 200
    assert canary.fired()


def test_the_canary_fires_when_signing_is_off_and_the_task_headers_are_right(client, canary):
    taskutils.configure(secret_keys=[])

    assert post(client, RECORD, canary.body(keys=[])) == 200
    assert canary.fired()  # headers alone are not proof: this is what the key ring is for


# Forged requests.


@pytest.mark.parametrize("keys", [[], [KEY]], ids=["unsigned", "signed"])
@pytest.mark.parametrize("headers", [{}, {"X-AppEngine-TaskName": "t"}, {"X-AppEngine-QueueName": "default"}])
def test_a_request_without_the_task_headers_is_refused(client, canary, keys, headers):
    taskutils.configure(secret_keys=keys)

    assert post(client, RECORD, canary.body(keys=keys), headers=headers) == 403
    assert not canary.fired()


@pytest.mark.parametrize("keys", [[], [KEY]], ids=["unsigned", "signed"])
@pytest.mark.parametrize("remote", ["10.0.0.7", "127.0.0.1", "0.1.0.1", ""])
def test_in_production_a_request_from_another_source_address_is_refused(client, canary, keys, remote):
    taskutils.configure(secret_keys=keys)

    with mock.patch.dict(os.environ, PROD):
        assert post(client, RECORD, canary.body(keys=keys), remote=remote) == 403
    assert not canary.fired()


@pytest.mark.parametrize("user_ip", [TASKQUEUE_SOURCE, "10.0.0.7"])
def test_in_production_without_wrap_wsgi_app_the_source_is_app_engines_user_ip_header(client, canary, user_ip):
    # App Engine without bundled services: REMOTE_ADDR is the front end's, and nothing copies
    # X-AppEngine-User-IP (set by App Engine on every request) into it.
    taskutils.configure(secret_keys=[KEY])

    with mock.patch.dict(os.environ, PROD):
        status = post(
            client,
            RECORD,
            canary.body(keys=[KEY]),
            headers={**TASK_HEADERS, "X-AppEngine-User-IP": user_ip},
            remote="169.254.1.1",
        )

    assert (status, canary.fired()) == ((200, True) if user_ip == TASKQUEUE_SOURCE else (403, False))


def test_an_unsigned_body_is_refused_while_keys_are_set(client, canary, signed):
    assert post(client, RECORD, canary.body(keys=[])) == 403
    assert not canary.fired()


def test_a_body_with_a_missing_signature_is_refused(client, canary, signed):
    signed_flag_without_signature = bytes([(codec.VERSION << 4) | codec.SIGNED | codec.BY_URL]) + canary.pickle

    assert post(client, RECORD, signed_flag_without_signature) == 403
    assert not canary.fired()


def test_a_wrong_signature_under_a_real_key_id_is_refused(client, canary, signed):
    body = bytearray(canary.body())
    body[1 + 4 : codec.SIGNED_PREFIX] = os.urandom(codec.MAC_SIZE)

    assert post(client, RECORD, bytes(body)) == 403
    assert not canary.fired()


def test_a_signature_by_a_key_rotated_out_of_the_ring_is_refused(client, canary, signed):
    assert post(client, RECORD, canary.body(keys=[OLD_KEY])) == 403
    assert not canary.fired()


def test_every_truncation_of_a_signed_body_is_refused(client, canary, signed):
    body = canary.body()

    statuses = {post(client, RECORD, body[:end]) for end in range(len(body))}

    assert statuses == {403}
    assert not canary.fired()


def test_every_single_byte_change_of_a_signed_body_is_refused(client, canary, signed):
    body = canary.body()

    statuses = set()
    for i in range(len(body)):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(body)
            tampered[i] ^= mask
            statuses.add(post(client, RECORD, bytes(tampered)))

    assert statuses == {403}
    assert not canary.fired()


@pytest.mark.parametrize("other", [CRASH, RECORD + "/", "/_ah/task/tasklib/report", "/_ah/task/os/system"])
def test_a_signed_body_replayed_to_another_task_url_is_refused(client, canary, signed, other):
    assert post(client, other, canary.body(url=RECORD)) == 403
    assert not canary.fired()


def test_an_oversized_body_is_refused_before_it_is_read(client, canary, signed):
    body = canary.body() + b"\0" * MAX_BODY

    assert post(client, RECORD, body) == 413
    assert not canary.fired()


@pytest.mark.parametrize("length", ["", "-1", "12x", str(MAX_BODY + 1)])
def test_a_missing_or_lying_content_length_is_refused(task_testbed, canary, signed, length):
    body = canary.body()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": RECORD,
        "CONTENT_LENGTH": length,
        "REMOTE_ADDR": TASKQUEUE_SOURCE,
        "wsgi.input": io.BytesIO(body),
        "HTTP_X_APPENGINE_TASKNAME": "t",
        "HTTP_X_APPENGINE_QUEUENAME": "default",
    }
    statuses = []
    taskutils.app(environ, lambda status, headers, exc_info=None: statuses.append(status))

    assert statuses[0][:3] in ("400", "413")
    assert not canary.fired()


# Spilled payloads: the pointer is signed, the data is checked against its digest.


def spilled_canary(canary, keys=(KEY,), digest_of=None):
    """A signed pointer to the canary spilled in Datastore; digest_of forges the pointer's digest."""
    pointer = spill.store("tasklib/record", canary.pickle)
    if digest_of is not None:
        fields = json.loads(pointer)
        fields["d"] = hashlib.sha256(digest_of).hexdigest()
        pointer = json.dumps(fields).encode()
    return codec.frame(RECORD, pointer, codec.BY_URL | codec.POINTER, KeyRing(keys))


def test_the_canary_fires_from_a_spill_whose_pointer_is_signed_and_digest_matches(client, canary, signed):
    assert post(client, RECORD, spilled_canary(canary)) == 200
    assert canary.fired()


def test_a_forged_pointer_to_a_spilled_canary_is_refused(client, canary, signed):
    assert post(client, RECORD, spilled_canary(canary, keys=[])) == 403
    assert post(client, RECORD, spilled_canary(canary, keys=[OLD_KEY])) == 403
    assert not canary.fired()


def test_a_spill_replaced_by_a_canary_is_dropped_without_being_unpickled(client, canary, signed, task_testbed):
    tasklib.record(os.urandom(300_000))
    (queued,) = task_testbed.tasks()
    (chunk,) = spill.TaskPayloadChunk.query().fetch()
    chunk.data = canary.pickle  # a pickle stops at its STOP opcode: only the digest can tell
    chunk.put()

    status, _ = task_testbed.post(queued)

    assert status == 200
    assert tasklib.ran == []
    assert not canary.fired()
    assert ndb.Query().fetch(keys_only=True) == []


def test_a_signed_pointer_with_a_digest_for_other_data_is_dropped_without_unpickling(client, canary, signed):
    assert post(client, RECORD, spilled_canary(canary, digest_of=b"something else")) == 200
    assert not canary.fired()


def test_a_signed_pointer_without_a_digest_is_dropped_without_unpickling(client, canary, signed):
    # Only an unsigned pointer may go without one: a signed call always carries its digest.
    pointer = spill.store("tasklib/record", canary.pickle, digest=False)
    body = codec.frame(RECORD, pointer, codec.BY_URL | codec.POINTER, KeyRing([KEY]))

    assert post(client, RECORD, body) == 200
    assert not canary.fired()


# Rotation and the log.


def test_a_task_enqueued_under_the_old_key_runs_while_the_old_key_is_still_in_the_ring(task_testbed):
    taskutils.configure(secret_keys=[OLD_KEY])
    tasklib.record("before the rotation")
    tasklib.record(os.urandom(300_000))  # a spilled one too
    taskutils.configure(secret_keys=[KEY, OLD_KEY])
    tasklib.record("after the rotation")

    task_testbed.drain()

    assert len(tasklib.ran) == 3
    assert ndb.Query().fetch(keys_only=True) == []


def test_tasks_signed_by_either_of_two_keys_whose_ids_collide_both_run(task_testbed):
    colliding = ("key-3776", "key-92154")  # one 4-byte key id, two secrets
    assert len({k.key_id for k in KeyRing(colliding).keys}) == 1
    taskutils.configure(secret_keys=[colliding[1]])
    tasklib.record("signed by the old key")
    taskutils.configure(secret_keys=list(colliding))
    tasklib.record("signed by the new key")

    statuses = [task_testbed.post(queued)[0] for queued in task_testbed.tasks()]

    assert statuses == [200, 200]
    assert sorted(args for args, _ in tasklib.ran) == [("signed by the new key",), ("signed by the old key",)]


def test_once_the_old_key_is_dropped_its_tasks_are_refused(task_testbed):
    taskutils.configure(secret_keys=[OLD_KEY])
    tasklib.record("enqueued under the old key")
    taskutils.configure(secret_keys=[KEY])

    (queued,) = task_testbed.tasks()
    status, _ = task_testbed.post(queued)

    assert status == 403
    assert tasklib.ran == []


def test_a_refusal_logs_the_verdict_and_the_key_id_but_never_the_body(client, canary, signed, caplog):
    caplog.set_level(logging.DEBUG, logger="taskutils")
    old_id = KeyRing([OLD_KEY]).keys[0].key_id.hex()

    post(client, RECORD, canary.body(keys=[OLD_KEY]))

    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "403" in text and old_id in text and "not in the key ring" in text
    assert str(canary.path) not in text and "canary" not in text.lower()


# Generated requests: a few hundred bodies and header sets, all refused.

_KEY_IDS = [KeyRing([KEY]).keys[0].key_id, KeyRing([OLD_KEY]).keys[0].key_id]
_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_extra_headers = st.dictionaries(
    st.from_regex(r"X-[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True), _header_text, max_size=4
)


@st.composite
def forged_bodies(draw, canary_pickle: bytes, signed_body: bytes) -> bytes:
    """Random bytes, canary frames with random signatures, and near-misses of a real signed body."""
    kind = draw(st.sampled_from(["random", "framed", "unsigned", "flipped", "truncated", "extended", "spliced"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    if kind == "framed":
        header = draw(st.integers(0, 255))
        key_id = draw(st.sampled_from(_KEY_IDS) | st.binary(min_size=4, max_size=4))
        return bytes([header]) + key_id + draw(st.binary(min_size=32, max_size=32)) + canary_pickle
    if kind == "unsigned":
        return bytes([draw(st.integers(0, 255)) & ~codec.SIGNED]) + canary_pickle
    if kind == "flipped":
        i = draw(st.integers(0, len(signed_body) - 1))
        return signed_body[:i] + bytes([signed_body[i] ^ draw(st.integers(1, 255))]) + signed_body[i + 1 :]
    if kind == "truncated":
        return signed_body[: draw(st.integers(0, len(signed_body) - 1))]
    if kind == "extended":
        i = draw(st.integers(0, len(signed_body)))
        return signed_body[:i] + draw(st.binary(min_size=1, max_size=16)) + signed_body[i:]
    prefix = draw(st.integers(0, codec.SIGNED_PREFIX))  # a real signature in front of other data
    return signed_body[:prefix] + draw(st.binary(max_size=64)) + canary_pickle


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_forgeries_are_all_refused_while_keys_are_set(client, canary, signed, data):
    signed_body = canary.body(url=RECORD)
    if data.draw(st.integers(0, 7)) == 0:  # the genuine body, replayed to another URL
        url, body = data.draw(st.sampled_from([CRASH, "/_ah/task/x", "/_ah/task/os/system"])), signed_body
    else:
        url = data.draw(st.sampled_from([RECORD, CRASH, "/_ah/task/x", "/_ah/task/os/system"]))
        body = data.draw(forged_bodies(canary.pickle, signed_body))
    headers = {
        name: value
        for name, value in (
            ("X-AppEngine-TaskName", data.draw(st.none() | _header_text)),
            ("X-AppEngine-QueueName", data.draw(st.none() | _header_text)),
            ("X-AppEngine-TaskRetryCount", data.draw(st.none() | _header_text)),
        )
        if value is not None
    } | data.draw(_extra_headers)
    remote = data.draw(st.sampled_from([TASKQUEUE_SOURCE, "10.1.2.3", "127.0.0.1"]))
    production = data.draw(st.booleans())

    with mock.patch.dict(os.environ, PROD if production else {}):
        status = post(client, url, body, headers=headers, remote=remote)

    assert 400 <= status < 500
    assert not canary.fired()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_requests_lacking_queue_headers_or_source_are_refused_even_unsigned(client, canary, data):
    taskutils.configure(secret_keys=[])
    body = data.draw(st.sampled_from([canary.body(keys=[]), canary.body(keys=[KEY])]) | st.binary(max_size=256))
    present = data.draw(st.sets(st.sampled_from(["X-AppEngine-TaskName", "X-AppEngine-QueueName"])))
    headers = {name: data.draw(_header_text) for name in present} | data.draw(_extra_headers)
    remote = data.draw(st.sampled_from(["10.1.2.3", "127.0.0.1", "0.1.0.3", TASKQUEUE_SOURCE]))
    production = data.draw(st.booleans())
    if len(present) == 2 and not (production and remote != TASKQUEUE_SOURCE):
        headers.pop(data.draw(st.sampled_from(sorted(present))))  # keep every request illegitimate

    with mock.patch.dict(os.environ, PROD if production else {}):
        status = post(client, RECORD, body, headers=headers, remote=remote)

    assert status == 403
    assert not canary.fired()
