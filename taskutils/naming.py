"""A task's URL name: the module and qualname of its callable, encoded as a readable, reversible path."""

from __future__ import annotations

import functools
import re
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_ESCAPED = re.compile(r"~([0-9a-f]{1,6})~")


def name_of(func: Callable[..., Any]) -> tuple[str, str]:
    """The module and qualified name a callable is known by: a partial or a bound method by its function's."""
    while isinstance(func, functools.partial):
        func = func.func
    if isinstance(func, types.MethodType):
        func = func.__func__
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if not isinstance(qualname, str):  # an instance with __call__: its class's name
        qualname, module = type(func).__qualname__, type(func).__module__
    if not isinstance(module, str):  # a builtin method, e.g. [].append: its class's module
        owner = getattr(func, "__self__", None)
        module = owner.__name__ if isinstance(owner, types.ModuleType) else type(owner).__module__
    return module, qualname


def _escape_char(match: re.Match[str]) -> str:
    return f"~{ord(match.group()):x}~"


def _escape_name(name: str) -> str:
    return _NAME_UNSAFE.sub(_escape_char, name)


def encode_name(module: str, qualname: str) -> str:
    """module/qualname as a readable, URL-safe ([A-Za-z0-9_.~/-]) and reversible path.

    A character outside [A-Za-z0-9_] becomes ``~hex~`` (``café`` is ``caf~e9~``);
    a nested function's ``.<locals>.`` becomes ``/`` and ``<lambda>`` ``lambda``.
    ``decode_name`` gives back module and qualname exactly for any name without those.
    """
    parts = qualname.split(".")
    path = ""
    for i, part in enumerate(parts):
        if part == "<locals>" and 0 < i < len(parts) - 1:
            path += "/"
            continue
        if path and not path.endswith("/"):
            path += "."
        path += "lambda" if part == "<lambda>" else _escape_name(part)
    return ".".join(map(_escape_name, module.split("."))) + "/" + path


def _unescape_char(match: re.Match[str]) -> str:
    return chr(int(match.group(1), 16))


def decode_name(path: str) -> tuple[str, str]:
    """The module and qualname of a by-URL task from the part of its URL after the route."""
    module, _, qualname = path.partition("/")
    if "~" in path:
        return _ESCAPED.sub(_unescape_char, module), _ESCAPED.sub(_unescape_char, qualname)
    return module, qualname


# Which code each URL path was given to, so that two callables never share one: a second lambda
# in one function gets ``.../lambda-2``. Only callables a worker cannot find by URL get a number.
_paths: dict[str, weakref.ref[Any]] = {}


def url_path_of(func: Callable[..., Any]) -> str:
    """The readable, URL-safe part of a task's URL after the route: module/function."""
    module, qualname = name_of(func)
    path = encode_name(module, qualname)
    code = getattr(func, "__code__", None)
    if code is None or "<" not in qualname:
        return path
    base, n = path, 1
    while True:
        claimed = _paths.get(path)
        owner = claimed() if claimed is not None else None
        if owner is None:
            _paths[path] = weakref.ref(code)
            return path
        if owner is code:
            return path
        n += 1
        path = f"{base}-{n}"


def resolve(module: str, qualname: str) -> Any:
    """The object named qualname in module, importing it if needed."""
    obj: Any = sys.modules.get(module)
    if obj is None:
        __import__(module)
        obj = sys.modules[module]
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj
