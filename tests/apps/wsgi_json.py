"""What the example apps share: JSON answers and query strings."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs


def respond(start_response: Callable[..., Any], status: str, body: Any) -> Iterable[bytes]:
    """Answer with body as JSON."""
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def query(environ: dict[str, Any]) -> dict[str, str]:
    """The request's query string, the last value of each name."""
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
