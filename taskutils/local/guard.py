"""Which requests the local server believes: task headers only from its own queue, and only its own hosts.

App Engine strips ``X-AppEngine-*`` headers from requests that come from outside,
so a handler may trust them. ``serve`` is as strict: its dispatcher adds a
per-process secret header (:data:`DISPATCH_HEADER`) to every task it posts, and
any other request has its ``X-AppEngine-*`` headers removed before the app sees
it, so task handlers (taskutils' own and deferred's) answer it 403. A request
whose ``Host`` names a host the server does not serve (a web page after DNS
rebinding) is refused outright.

In Cloud Tasks mode the tasks come from Cloud Tasks (or its emulator), which
cannot know the secret: there, requests from a loopback address keep their
``X-AppEngine-*`` headers.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import socket
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("taskutils.local")

DISPATCH_HEADER = "X-Taskutils-Dispatch"
_DISPATCH_KEY = "HTTP_X_TASKUTILS_DISPATCH"
_TASK_PREFIX = "HTTP_X_APPENGINE_"
_LOCAL_NAMES = ("localhost",)


def new_secret() -> str:
    """A fresh secret for one server process."""
    return secrets.token_urlsafe(32)


def _hostname(host_header: str) -> str:
    """The host part of a Host header, lowercased, without port or IPv6 brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


class RequestGuard:
    """Checks each request before the app sees it; see the module's docstring.

    ``host`` is the address the server binds; the names it answers to are
    that, ``localhost``, this machine's host name and any IP address (a DNS
    rebinding attack needs a name of the attacker's).
    """

    def __init__(self, secret: str, host: str, *, trust_loopback: bool = False) -> None:
        self.secret = secret
        self.trust_loopback = trust_loopback
        self.names = frozenset(
            n for n in (_hostname(host), *_LOCAL_NAMES, socket.gethostname().lower().rstrip(".")) if n
        )

    def serves_host(self, environ: Mapping[str, Any]) -> bool:
        """True when the request's Host (if any) is one this server serves."""
        header = environ.get("HTTP_HOST")
        if not header:
            return True
        name = _hostname(header)
        return name in self.names or name.endswith(".localhost") or _is_ip(name)

    def dispatched(self, environ: Mapping[str, Any]) -> bool:
        """True when the request carries this server's dispatch secret."""
        sent = environ.get(_DISPATCH_KEY)
        return isinstance(sent, str) and hmac.compare_digest(sent.encode(), self.secret.encode())

    def check(self, environ: dict[str, Any]) -> str | None:
        """Strip task headers the server's queue did not send; return why the request is refused, or None."""
        dispatched = self.dispatched(environ)
        environ.pop(_DISPATCH_KEY, None)
        if dispatched:
            return None
        if not self.serves_host(environ):
            return f"Host {environ.get('HTTP_HOST')!r} is not one this server serves"
        if self.trust_loopback and _is_loopback(environ.get("REMOTE_ADDR")):
            return None
        stripped = [key for key in environ if key.startswith(_TASK_PREFIX)]
        if stripped:
            for key in stripped:
                del environ[key]
            log.warning(
                "removed X-AppEngine-* headers from %s %r: only the server's own queue sends them",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO", ""),
            )
        return None
