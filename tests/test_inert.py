"""Reading a task's pickle for the console without running any of its code."""

from __future__ import annotations

import datetime
import decimal
import io
import os
import pickle
import uuid
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from taskutils.webconsole import inert


class OpensWhenLoaded:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


class Account:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __setstate__(self, state: dict[str, Any]) -> None:
        open(state["path"], "w").close()

    def __repr__(self) -> str:
        open(self.path, "w").close()
        return "Account()"


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_nothing_a_pickle_names_is_called_or_constructed(tmp_path, protocol):
    canary = tmp_path / "canary"
    data = cloudpickle.dumps(([OpensWhenLoaded(canary), Account(canary)], {"k": Account(canary)}), protocol=protocol)

    shown = repr(inert.read(data))

    assert not canary.exists()
    # open is io.open to pickle before Python 3.12, _io.open from 3.12 on: named either way, never called
    assert f"<{io.open.__module__}.open object>" in shown and shown.count("<test_inert.Account object>") == 2


def test_plain_values_show_as_themselves():
    when = datetime.datetime(2026, 12, 7, 2, 30, tzinfo=datetime.timezone.utc)
    ident = uuid.UUID(int=7)
    values = (1, 2.5, "s", b"b", None, True, [1], {"k": (2,)}, {3}, frozenset({4}), 1j)
    extra = (when, datetime.date(2026, 1, 2), datetime.timedelta(seconds=3), decimal.Decimal("1.25"), ident)

    assert inert.read(pickle.dumps(values + extra[:-1])) == values + extra[:-1]
    assert repr(inert.read(pickle.dumps(ident))) == repr(ident)


def test_a_closure_and_an_instance_of_a_class_pickled_by_value_are_named():
    suffix = "!"

    class Local:
        pass

    def shout(word: str) -> str:
        return word + suffix

    func, args, kwargs = inert.read(cloudpickle.dumps((shout, (Local(),), {"n": 2})))

    assert inert.name_of(func).endswith(
        "test_a_closure_and_an_instance_of_a_class_pickled_by_value_are_named.<locals>.shout"
    )
    assert repr(args) == f"(<{__name__}.Local object>,)"
    assert kwargs == {"n": 2}


def test_the_globals_of_a_pickle_are_listed_without_loading_it():
    data = pickle.dumps((os.system, "echo hi"), protocol=0)

    assert inert.globals_named(data) == [f"{os.system.__module__}.system"]
    assert "cloudpickle.cloudpickle._make_function" in inert.globals_named(cloudpickle.dumps(lambda: 1))
