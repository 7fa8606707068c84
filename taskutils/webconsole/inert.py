"""Read a pickle without running any of its code: what the console shows of a task's call.

:func:`read` walks a pickle with the standard unpickler, but every global it
names (a function, a class, ``open``, ``os.system``...) becomes a :class:`Named`
stand-in instead of the real object, so nothing the pickle names is imported,
called or constructed. Primitive values (numbers, strings, bytes, None, bools)
and containers come out as themselves; a few value types whose constructors run
no user code (``datetime``, ``Decimal``, ``UUID``...) are rebuilt so they read
well; any other object is an :class:`Opaque` that shows its class path.
"""

from __future__ import annotations

import datetime
import decimal
import io
import pickle
import pickletools
import uuid
from typing import Any

# Constructors that build plain values from plain arguments and run no code of the pickle's.
_VALUES: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "date"): datetime.date,
    ("datetime", "time"): datetime.time,
    ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
    ("decimal", "Decimal"): decimal.Decimal,
}
_PLAIN = (str, bytes, int, float, bool, type(None), datetime.timedelta, datetime.tzinfo)


class Opaque:
    """An object the pickle would build, shown by the path of what builds it; never constructed."""

    __slots__ = ("path", "state", "items")

    def __init__(self, path: str) -> None:
        self.path = path
        self.state: Any = None
        self.items: list[Any] = []

    def __repr__(self) -> str:
        return f"<{self.path} object>"

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Opaque:
        return Opaque(self.path)

    # The unpickler fills list- and dict-like objects through these.
    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    @property
    def qualified_name(self) -> str | None:
        """For a function cloudpickle rebuilt: ``module.qualname`` from its state; None otherwise."""
        parts = self.state if isinstance(self.state, tuple) else (self.state,)
        for state in parts:
            if isinstance(state, dict) and isinstance(state.get("__qualname__"), str):
                module = state.get("__module__")
                return f"{module}.{state['__qualname__']}" if isinstance(module, str) else state["__qualname__"]
        return None


class _UuidValue(Opaque):
    """A ``uuid.UUID`` as its pickle stores it (``__setstate__`` of ``{"int": ...}``), shown as one."""

    __slots__ = ()

    def __repr__(self) -> str:
        state = self.state
        if isinstance(state, dict) and isinstance(state.get("int"), int):
            try:
                return repr(uuid.UUID(int=state["int"]))
            except ValueError:
                pass
        return super().__repr__()


class _NamedType(type):
    path: str

    def __repr__(cls) -> str:
        return cls.path


class Named(metaclass=_NamedType):
    """Stands for a global the pickle names (a function, a class): calling it builds an :class:`Opaque`.

    It is a class because the unpickler's ``NEWOBJ`` insists on one.
    """

    path = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return Opaque(cls.path)


class _Value(Named):
    """A value type from ``_VALUES``: built for real when its arguments are plain, an Opaque otherwise."""

    build: Any = None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if not kwargs and all(isinstance(a, _PLAIN) for a in args):
            try:
                return cls.build(*args)
            except (TypeError, ValueError, ArithmeticError):
                pass
        return Opaque(cls.path)


class _StateSetter(Named):
    """cloudpickle's ``_function_setstate(obj, state)`` and ``_class_setstate``: the state names obj."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 2 and isinstance(args[0], Opaque):
            args[0].state = args[1]
            return args[0]
        if len(args) == 2 and isinstance(args[0], _NamedType):
            parts = args[1] if isinstance(args[1], tuple) else (args[1],)
            module = next((p.get("__module__") for p in parts if isinstance(p, dict) and "__module__" in p), None)
            if isinstance(module, str):
                args[0].path = f"{module}.{args[0].path.rpartition('.')[2]}"
            return args[0]
        return Opaque(cls.path)


class _ClassMaker(Named):
    """cloudpickle's ``_make_skeleton_class(type, name, ...)``: a stand-in class of that name, so
    the pickle's instances of it (``NEWOBJ``, which needs a class) become Opaques too."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        name = args[1] if len(args) > 1 and isinstance(args[1], str) else "?"
        return _NamedType("Named", (Named,), {"path": name})


class _Reconstructor(Named):
    """copyreg's ``_reconstructor(cls, base, state)``: an Opaque of cls, never cls itself."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return Opaque(getattr(args[0], "path", "?") if args else "?")


class _Uuid(Named):
    path = "uuid.UUID"

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return _UuidValue(cls.path)


def _stand_in(module: str, name: str) -> type:
    path = f"{module}.{name}"
    key = (module, name)
    if key in _VALUES:
        return _NamedType("Named", (_Value,), {"path": path, "build": staticmethod(_VALUES[key])})
    if module in ("copyreg", "copy_reg") and name == "_reconstructor":
        return _NamedType("Named", (_Reconstructor,), {"path": path})
    if key == ("uuid", "UUID"):
        return _Uuid
    if module.startswith("cloudpickle") and name.startswith("_make_skeleton"):
        return _NamedType("Named", (_ClassMaker,), {"path": path})
    if module.startswith("cloudpickle") and name.endswith("_setstate"):
        return _NamedType("Named", (_StateSetter,), {"path": path})
    return _NamedType("Named", (Named,), {"path": path})


class _InertUnpickler(pickle.Unpickler):
    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self._named: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        found = self._named.get(key)
        if found is None:
            found = self._named[key] = _stand_in(module, name)
        return found

    def persistent_load(self, pid: Any) -> Any:
        return Opaque("persistent id")


def read(data: bytes) -> Any:
    """The object data pickles, with every global it names replaced by a stand-in; raises on a broken pickle."""
    return _InertUnpickler(io.BytesIO(data)).load()


def globals_named(data: bytes, limit: int = 20) -> list[str]:
    """The globals a pickle names (``module.name``), in order, without loading it: for when :func:`read` cannot."""
    found: list[str] = []
    pushed: list[Any] = []  # what the last opcodes pushed, as far as strings go (None: something else)
    memo: dict[int, Any] = {}
    try:
        for opcode, arg, _ in pickletools.genops(data):
            op = opcode.name
            name = None
            if op in ("GLOBAL", "INST") and isinstance(arg, str):
                name = arg.replace(" ", ".", 1)
            elif op == "STACK_GLOBAL":
                module, qualname = pushed[-2:] if len(pushed) >= 2 else [None, None]
                if isinstance(module, str) and isinstance(qualname, str):
                    name = f"{module}.{qualname}"
                pushed[-2:] = [None]
            elif op == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif op in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg or 0)] = pushed[-1] if pushed else None
            elif op in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(int(arg or 0)))
            elif op not in ("PROTO", "FRAME", "MARK", "STOP"):
                pushed.append(arg if isinstance(arg, str) and "UNICODE" in op else None)
            del pushed[:-2]
            if name is not None and name not in found:
                found.append(name)
                if len(found) >= limit:
                    break
    except (ValueError, pickle.UnpicklingError):
        pass
    return found


def name_of(func: Any) -> str:
    """What a task's callable, read inertly, names: ``module.qualname`` where the pickle says it."""
    if isinstance(func, _NamedType):
        return func.path
    if isinstance(func, Opaque):
        return func.qualified_name or func.path
    return type(func).__qualname__
