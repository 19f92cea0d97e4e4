"""Content hashes: data versions, head set ids, job fingerprints and shard fingerprints all come from here.

A hash that is stored (in a provenance file, a footer, a partition's data version, a resume checkpoint) must
never change for the same input, so each caller keeps the exact bytes it has always hashed; what is shared is
the hash itself (sha256, hex, cut to a length) and the one JSON form most of them use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable


def sha256_hex(data: bytes | Iterable[bytes], n: int | None = None) -> str:
    """sha256 of `data` (bytes, or chunks hashed as their concatenation), hex, its first `n` characters."""
    h = hashlib.sha256()
    for chunk in [data] if isinstance(data, bytes | bytearray) else data:
        h.update(chunk)
    return h.hexdigest()[:n]


def canonical_json(obj) -> str:
    """Keys sorted, anything not JSON-able (paths, datetimes) as its `str`: equal content, equal text."""
    return json.dumps(obj, sort_keys=True, default=str)


def digest(obj, n: int = 16) -> str:
    """A short stable hash of a JSON-able value: equal content gives an equal digest."""
    return sha256_hex(canonical_json(obj).encode(), n)
