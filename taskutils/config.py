"""Settings that apply to every task: the route prefix, the signing key ring and the backend."""

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


BACKENDS = ("appengine", "cloud")


@dataclass
class CloudSettings:
    """Where the ``cloud`` backend adds tasks and who may send them (see ``configure``)."""

    project: str | None = None  # None: GOOGLE_CLOUD_PROJECT, read when the first task is added
    location: str | None = None  # None: LOCATION_ID
    target: str | None = None  # base URL of HTTP targets; None: App Engine routing
    service_account: str | None = None  # the OIDC token Cloud Tasks attaches is for this account
    audience: str | None = None  # None: target
    allowed_senders: tuple[str, ...] | None = None  # None: (service_account,)
    oidc_certs_url: str | None = None  # None: Google's

    def resolved_project(self) -> str:
        project = self.project or os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("DATASTORE_PROJECT_ID")
        if not project:
            raise ValueError("the cloud backend needs a project: configure(project=...) or GOOGLE_CLOUD_PROJECT")
        return project

    def resolved_location(self) -> str:
        location = self.location or os.environ.get("LOCATION_ID")
        if not location:
            raise ValueError("the cloud backend needs a location: configure(location=...) or LOCATION_ID")
        return location

    def resolved_audience(self) -> str | None:
        return self.audience or self.target

    def senders(self) -> tuple[str, ...]:
        if self.allowed_senders is not None:
            return self.allowed_senders
        return (self.service_account,) if self.service_account else ()


class Settings:
    """The process-wide settings; read them through the getters below."""

    def __init__(self) -> None:
        self.route = DEFAULT_ROUTE
        self._keyring: KeyRing | None = None
        self.backend = os.environ.get("TASKUTILS_BACKEND", "appengine")
        self.cloud = CloudSettings()

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


_UNSET: object = object()


def configure(
    *,
    secret_keys: Iterable[str | bytes] | None | object = _UNSET,
    backend: str | None = None,
    project: str | None | object = _UNSET,
    location: str | None | object = _UNSET,
    target: str | None | object = _UNSET,
    service_account: str | None | object = _UNSET,
    audience: str | None | object = _UNSET,
    allowed_senders: Iterable[str] | None | object = _UNSET,
    oidc_certs_url: str | None | object = _UNSET,
) -> None:
    """Set what tasks run on; settings not given keep their value.

    ``secret_keys``: the signing key ring, the first key signs and all verify; ``[]``
    turns signing off; ``None`` goes back to the comma-separated
    ``TASKUTILS_SECRET_KEYS`` environment variable.

    ``backend``: ``"appengine"`` (the default: the taskqueue SDK and bundled Datastore)
    or ``"cloud"`` (the Cloud Tasks client and Cloud Datastore). The other arguments
    set the cloud backend: ``project`` and ``location`` of its queues (default
    ``GOOGLE_CLOUD_PROJECT`` and ``LOCATION_ID``), ``target`` (the base URL of HTTP
    tasks; ``None``: App Engine routing), ``service_account`` (whose OIDC token Cloud
    Tasks attaches), ``audience`` (default ``target``), ``allowed_senders`` (emails
    whose tokens the handler accepts; default ``[service_account]``) and
    ``oidc_certs_url`` (default Google's).
    """
    if secret_keys is not _UNSET:
        settings._keyring = None if secret_keys is None else KeyRing(secret_keys)  # type: ignore[arg-type]
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        settings.backend = backend
    cloud = settings.cloud
    for name, value in (
        ("project", project),
        ("location", location),
        ("target", target),
        ("service_account", service_account),
        ("audience", audience),
        ("oidc_certs_url", oidc_certs_url),
    ):
        if value is not _UNSET:
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None, got {type(value).__name__}")
            setattr(cloud, name, value)
    if isinstance(cloud.target, str):
        cloud.target = cloud.target.rstrip("/")
        if not cloud.target.startswith(("https://", "http://")):
            raise ValueError(f"target must be a URL like 'https://worker-abc.a.run.app', got {cloud.target!r}")
    if allowed_senders is not _UNSET:
        if isinstance(allowed_senders, str):
            raise TypeError("allowed_senders is a list of emails, not one string")
        cloud.allowed_senders = None if allowed_senders is None else tuple(allowed_senders)  # type: ignore[arg-type]


def get_backend() -> str:
    """The backend in use: ``"appengine"`` or ``"cloud"``."""
    return settings.backend


def get_keyring() -> KeyRing:
    """Return the key ring in force."""
    return settings.keyring
