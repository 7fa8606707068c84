"""Settings that apply to every task: the route prefix and the signing key ring."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_ROUTE = "/_ah/task"
KEYS_ENV = "TASKUTILS_SECRET_KEYS"
KEY_ID_SIZE = 4

_ROUTE_RE = re.compile(r"^(/[A-Za-z0-9_.~-]+)+$")


@dataclass(frozen=True)
class Key:
    """One signing key and the short id that names it in a payload."""

    secret: bytes
    key_id: bytes

    @classmethod
    def from_secret(cls, secret: str | bytes) -> Key:
        raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if not raw:
            raise ValueError("a secret key must not be empty")
        key_id = hashlib.sha256(b"taskutils-key-id\0" + raw).digest()[:KEY_ID_SIZE]
        return cls(raw, key_id)


class KeyRing:
    """The first key signs; every key verifies, so keys can be rotated.

    Key ids are short, so two secrets can share one: a payload is then checked
    against every key with its id.
    """

    def __init__(self, secrets: Iterable[str | bytes]) -> None:
        self.keys: tuple[Key, ...] = tuple(Key.from_secret(s) for s in secrets)
        by_id: dict[bytes, tuple[Key, ...]] = {}
        for k in self.keys:
            by_id[k.key_id] = by_id.get(k.key_id, ()) + (k,)
        self._by_id = by_id

    def __bool__(self) -> bool:
        return bool(self.keys)

    @property
    def signing_key(self) -> Key | None:
        return self.keys[0] if self.keys else None

    def find(self, key_id: bytes) -> tuple[Key, ...]:
        """Every key in the ring with this id, in ring order; () when none has it."""
        return self._by_id.get(key_id, ())

    @classmethod
    def from_env(cls) -> KeyRing:
        value = os.environ.get(KEYS_ENV, "")
        return cls(s.strip() for s in value.split(",") if s.strip())


class Settings:
    """The process-wide settings; read them through the getters below."""

    def __init__(self) -> None:
        self.route = DEFAULT_ROUTE
        self._keyring: KeyRing | None = None

    @property
    def keyring(self) -> KeyRing:
        if self._keyring is None:
            self._keyring = KeyRing.from_env()
        return self._keyring


settings = Settings()


def set_taskroute(route: str) -> None:
    """Set the URL prefix of tasks enqueued from now on, and of what the handler serves."""
    route = route.rstrip("/")
    if not _ROUTE_RE.fullmatch(route):
        raise ValueError(f"a task route must look like '/_ah/task', got {route!r}")
    settings.route = route


def get_taskroute() -> str:
    """Return the URL prefix of tasks, '/_ah/task' unless set_taskroute changed it."""
    return settings.route


def configure(*, secret_keys: Iterable[str | bytes] | None = None) -> None:
    """Set the signing key ring: the first key signs, all verify; [] turns signing off.

    ``secret_keys=None`` goes back to the default, the comma-separated
    ``TASKUTILS_SECRET_KEYS`` environment variable.
    """
    settings._keyring = None if secret_keys is None else KeyRing(secret_keys)


def get_keyring() -> KeyRing:
    """Return the key ring in force."""
    return settings.keyring
