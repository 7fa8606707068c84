"""What ``map_query`` keeps of a shard, on either backend: its checkpoint and the items of a page.

``taskutils.mapquery_store`` (bundled ndb) and ``taskutils.backends.cloud_mapquery`` (Cloud
NDB) both read and write these; neither needs the other's SDK.
"""

from __future__ import annotations

import dataclasses
from typing import Any

OVERSAMPLING = 32  # scatter keys read per shard, as appengine-mapreduce's DatastoreInputReader did
SHARD_KIND = "_TaskutilsShard"


@dataclasses.dataclass
class Checkpoint:
    """A shard's checkpoint as the walker sees it."""

    group_id: str
    shard: int
    key_range: str
    cursor: bytes | None = None
    count: int = 0
    generation: int = 0
    owner: str | None = None
    lease: float = 0.0
    status: str = "walking"
    failures: int = 0
    error: str | None = None


@dataclasses.dataclass
class Item:
    """One result of a page: what the function gets, its key, and the cursor just after it (if asked for)."""

    value: Any
    key: Any
    cursor: bytes | None
