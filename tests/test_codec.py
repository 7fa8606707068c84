"""The payload codec: framing, signing, verifying, and what the call site is told."""

import functools
import logging
import pickle
import subprocess
import sys
import types

import pytest
from google.appengine.ext import ndb

import taskutils
from taskutils import codec
from taskutils.config import KeyRing
from taskutils.exc import CorruptPayloadError, PayloadTooLargeError, SignatureError, UnpicklableArgumentError

import tasklib

PATH = "/_ah/task/tasklib/record"
DATA = pickle.dumps(((1, b"\0two\0"), {"three": 3}))


@pytest.fixture
def ring():
    return KeyRing(["key-new", "key-old"])


def test_a_signed_frame_round_trips_with_its_flags(ring):
    body = codec.frame(PATH, DATA, codec.BY_URL | codec.HEADERS, ring)

    flags, data = codec.unframe(PATH, body, ring)

    assert data == DATA
    assert flags & codec.BY_URL and flags & codec.HEADERS and flags & codec.SIGNED
    assert codec.key_id_of(body) == ring.keys[0].key_id.hex()


def test_an_unsigned_frame_round_trips_when_signing_is_off():
    body = codec.frame(PATH, DATA, codec.BY_URL, KeyRing([]))

    assert body[1:] == DATA
    assert codec.unframe(PATH, body, KeyRing([])) == (codec.BY_URL, DATA)
    assert codec.key_id_of(body) == ""


def test_a_signed_frame_is_still_read_after_signing_is_turned_off(ring):
    body = codec.frame(PATH, DATA, 0, ring)

    flags, data = codec.unframe(PATH, body, KeyRing([]))

    assert data == DATA


def test_the_first_key_signs_and_every_key_in_the_ring_verifies():
    old_body = codec.frame(PATH, DATA, 0, KeyRing(["key-old"]))
    rotated = KeyRing(["key-new", "key-old"])
    new_body = codec.frame(PATH, DATA, 0, rotated)

    assert codec.unframe(PATH, old_body, rotated)[1] == DATA
    assert codec.key_id_of(new_body) == rotated.keys[0].key_id.hex() != codec.key_id_of(old_body)
    assert codec.unframe(PATH, new_body, KeyRing(["key-new"]))[1] == DATA


def test_a_payload_signed_with_a_key_no_longer_in_the_ring_is_refused_naming_its_key_id():
    body = codec.frame(PATH, DATA, 0, KeyRing(["key-old"]))

    with pytest.raises(SignatureError, match=KeyRing(["key-old"]).keys[0].key_id.hex()):
        codec.unframe(PATH, body, KeyRing(["key-new"]))


def test_a_same_length_key_with_another_secret_does_not_verify():
    body = codec.frame(PATH, DATA, 0, KeyRing(["secret-a"]))
    impostor = KeyRing(["secret-b"])
    forged = body[:1] + impostor.keys[0].key_id + body[1 + len(impostor.keys[0].key_id) :]

    with pytest.raises(SignatureError, match="bad signature"):
        codec.unframe(PATH, forged, impostor)


def test_changing_any_bit_of_a_signed_body_is_refused(ring):
    body = codec.frame(PATH, DATA, codec.BY_URL, ring)

    for i in range(len(body)):
        for bit in range(8):
            tampered = bytearray(body)
            tampered[i] ^= 1 << bit
            with pytest.raises(SignatureError):
                codec.unframe(PATH, bytes(tampered), ring)


def test_every_truncation_and_any_appended_byte_is_refused(ring):
    body = codec.frame(PATH, DATA, 0, ring)

    for end in range(len(body)):
        with pytest.raises(SignatureError):
            codec.unframe(PATH, body[:end], ring)
    with pytest.raises(SignatureError):
        codec.unframe(PATH, body + b"\0", ring)


def test_an_unsigned_body_is_refused_while_keys_are_set(ring):
    body = codec.frame(PATH, DATA, 0, KeyRing([]))

    with pytest.raises(SignatureError, match="not signed"):
        codec.unframe(PATH, body, ring)


def test_a_body_signed_for_one_url_is_refused_at_any_other(ring):
    body = codec.frame(PATH, DATA, 0, ring)

    for other in (PATH + "x", PATH[:-1], PATH + "/", "/_ah/task/tasklib/crash", PATH.upper(), ""):
        with pytest.raises(SignatureError, match="bad signature"):
            codec.unframe(other, body, ring)


def test_moving_bytes_between_the_url_and_the_data_does_not_keep_a_signature_valid(ring):
    # A MAC over path + NUL + data would let "PATH\0head" with data "tail" pass for PATH with "head\0tail".
    data = b"head\0tail"
    body = codec.frame(PATH, data, 0, ring)
    spliced = body[: codec.SIGNED_PREFIX] + b"tail"

    with pytest.raises(SignatureError):
        codec.unframe(PATH + "\0head", spliced, ring)


def test_odd_url_paths_are_signed_and_checked_without_crashing(ring):
    for path in ("/_ah/task/\udcff/x", "/_ah/task/ü/é", "/_ah/task/\0"):
        body = codec.frame(path, DATA, 0, ring)
        assert codec.unframe(path, body, ring)[1] == DATA
        with pytest.raises(SignatureError):
            codec.unframe(PATH, body, ring)


@pytest.mark.parametrize("body", [b"", bytes([0x20]) + DATA, bytes([0xF2]) + b"\0" * 40])
def test_an_empty_body_or_an_unknown_version_is_refused_while_keys_are_set(ring, body):
    with pytest.raises(SignatureError):
        codec.unframe(PATH, body, ring)


@pytest.mark.parametrize("body", [b"", bytes([0x20]) + DATA])
def test_an_empty_body_or_an_unknown_version_is_corrupt_when_signing_is_off(body):
    with pytest.raises(CorruptPayloadError):
        codec.unframe(PATH, body, KeyRing([]))


def test_an_unpicklable_keyword_argument_is_named_at_the_call_site(task_testbed):
    with pytest.raises(UnpicklableArgumentError, match=r"tasklib/record: argument 'lock' \(lock\)"):
        tasklib.record(1, lock=__import__("threading").Lock())

    assert task_testbed.tasks() == []


def test_a_payload_over_the_maximum_raises_at_the_call_site_naming_task_and_argument(task_testbed):
    big = bytes(codec.MAX_PAYLOAD)

    with pytest.raises(PayloadTooLargeError, match=r"tasklib/record: .* the largest part is argument 1 \(bytes"):
        tasklib.record("small", big)
    with pytest.raises(PayloadTooLargeError, match=r"largest part is argument 'blob'"):
        tasklib.record(blob=big)

    assert task_testbed.tasks() == []
    assert ndb.Query().fetch(keys_only=True) == []


@pytest.fixture
def fresh_warning(monkeypatch):
    """Forget that the process looked for App Engine to warn about unsigned payloads."""
    monkeypatch.setattr(codec, "_checked_unsigned", False)


@pytest.mark.parametrize("gae_env", ["standard", "localdev"], ids=["production", "dev_appserver"])
def test_unsigned_tasks_on_app_engine_or_its_dev_appserver_warn_once_pointing_to_the_docs(
    task_testbed, fresh_warning, monkeypatch, caplog, gae_env
):
    monkeypatch.setenv("GAE_ENV", gae_env)
    taskutils.configure(secret_keys=[])
    caplog.set_level(logging.WARNING, logger="taskutils")

    tasklib.record(1)
    tasklib.record(2)
    for queued in task_testbed.tasks():
        task_testbed.post(queued)

    warnings = [r for r in caplog.records if r.name == "taskutils" and "unsigned" in r.getMessage()]
    assert len(warnings) == 1
    assert "Trust and signing keys" in warnings[0].getMessage()


def test_the_handler_warns_about_unsigned_payloads_even_if_this_process_enqueued_none(
    task_testbed, fresh_warning, monkeypatch, caplog
):
    taskutils.configure(secret_keys=[])
    tasklib.record(1)
    (queued,) = task_testbed.tasks()
    # The worker is another process, on App Engine, that has enqueued nothing itself.
    monkeypatch.setattr(codec, "_checked_unsigned", False)
    monkeypatch.setenv("GAE_ENV", "standard")
    caplog.set_level(logging.WARNING, logger="taskutils")

    status, _ = task_testbed.post(queued)

    assert status == 200
    assert [r.getMessage() for r in caplog.records if "Trust and signing keys" in r.getMessage()]


def test_there_is_no_unsigned_warning_with_keys_or_outside_production(task_testbed, fresh_warning, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="taskutils")
    taskutils.configure(secret_keys=[])
    tasklib.record("dev")
    task_testbed.drain()
    monkeypatch.setenv("GAE_ENV", "standard")
    taskutils.configure(secret_keys=["k"])
    tasklib.record("prod, signed")
    task_testbed.drain()

    assert len(tasklib.ran) == 2
    assert not [r for r in caplog.records if "unsigned" in r.getMessage()]


# Two secrets whose 4-byte key ids collide (found by search once; asserted below).
COLLIDING = ("key-3776", "key-92154")


def test_the_colliding_pair_really_shares_a_key_id():
    first, second = KeyRing(COLLIDING).keys

    assert first.key_id == second.key_id and first.secret != second.secret


@pytest.mark.parametrize("signer", COLLIDING)
def test_two_keys_whose_ids_collide_both_verify_in_either_order(signer):
    body = codec.frame(PATH, DATA, 0, KeyRing([signer]))

    for order in (COLLIDING, COLLIDING[::-1]):
        assert codec.unframe(PATH, body, KeyRing(order))[1] == DATA


def test_a_key_sharing_the_signers_id_but_not_its_secret_still_refuses_the_payload():
    body = codec.frame(PATH, DATA, 0, KeyRing([COLLIDING[0]]))

    with pytest.raises(SignatureError, match="bad signature"):
        codec.unframe(PATH, body, KeyRing([COLLIDING[1]]))


# Code defined in __main__ (a script, a notebook) cannot be imported by a worker: it is pickled by value.

MAIN_SOURCE = """
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __repr__(self):
        return f"Point({self.x}, {self.y})"


def twice(x):
    return 2 * x
"""


@pytest.fixture
def main(monkeypatch):
    """Point and twice defined in the script being run, where the standard pickler would find them by name."""
    namespace = {"__name__": "__main__"}
    exec(MAIN_SOURCE, namespace)
    for name in ("Point", "twice"):
        monkeypatch.setattr(sys.modules["__main__"], name, namespace[name], raising=False)
    return types.SimpleNamespace(Point=namespace["Point"], twice=namespace["twice"])


def run_in_a_fresh_process(data: bytes) -> str:
    """Unpickle a call as a worker would, in another interpreter, run it and return what it printed."""
    script = "import pickle, sys; f, a, k = pickle.loads(sys.stdin.buffer.read()); print(f(*a, **k))"
    done = subprocess.run([sys.executable, "-c", script], input=data, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().strip()


def test_an_object_of_a_class_from_main_deep_in_the_arguments_is_pickled_so_a_worker_can_load_it(main):
    data = codec.dumps((repr, ([{"points": [main.Point(1, 2)]}],), {}))

    assert run_in_a_fresh_process(data) == "[{'points': [Point(1, 2)]}]"


def test_a_function_from_main_as_the_callable_is_pickled_so_a_worker_can_run_it(main):
    data = codec.dumps((main.twice, (21,), {}))

    assert run_in_a_fresh_process(data) == "42"


def test_a_function_from_main_passed_as_a_keyword_argument_is_pickled_so_a_worker_can_call_it(main):
    data = codec.dumps((sorted, ([3, 1, 2],), {"key": main.twice}))

    assert run_in_a_fresh_process(data) == "[1, 2, 3]"


def test_a_partial_of_a_function_from_main_as_the_callable_is_pickled_so_a_worker_can_run_it(main):
    data = codec.dumps((functools.partial(main.twice, 20), (), {}))

    assert run_in_a_fresh_process(data) == "40"
