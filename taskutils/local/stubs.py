"""Google's App Engine service stubs for the local server: taskqueue, datastore, memcache.

The stubs are registered in a fresh ``APIProxyStubMap``; calls to stubs that are
not thread-safe are serialised under one lock, as dev_appserver did.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from google.appengine.api import apiproxy_rpc, request_info

from .dispatch import HTTPDispatcher


class StubLogFilter(logging.Filter):
    """Name the taskqueue stub's root-logger lines ("will retry in 0.2 seconds") ``taskqueue_stub``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root" and record.pathname.endswith("taskqueue_stub.py"):
            record.name = "taskqueue_stub"
        return True


class _RequestInfo(request_info.RequestInfo):
    """What the taskqueue stub asks about the current request: one module, our dispatcher."""

    def __init__(self, dispatcher: HTTPDispatcher) -> None:
        self._dispatcher = dispatcher

    def get_request_url(self, request_id: object) -> str:
        return f"http://{self._dispatcher.host}:{self._dispatcher.port}/"

    def get_request_environ(self, request_id: object) -> dict[str, str]:
        return {}

    def get_module(self, request_id: object) -> str:
        return "default"

    def get_version(self, request_id: object) -> str:
        return "local"

    def get_instance(self, request_id: object) -> int:
        return 0

    def get_dispatcher(self) -> HTTPDispatcher:
        return self._dispatcher


class _Serialized:
    """A stub whose calls run one at a time, as dev_appserver ran stubs not marked THREADSAFE."""

    THREADSAFE = False

    def __init__(self, stub: Any, lock: threading.RLock) -> None:
        self.stub = stub
        self._lock = lock

    def CreateRPC(self) -> apiproxy_rpc.RPC:  # noqa: N802 - the stub map's interface
        return apiproxy_rpc.RPC(stub=self)

    def MakeSyncCall(self, service: str, call: str, request: Any, response: Any, request_id: Any = None) -> Any:  # noqa: N802
        with self._lock:
            return self.stub.MakeSyncCall(service, call, request, response, request_id)
