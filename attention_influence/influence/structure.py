"""Cheap structure features of a scored document: what the AttentionInfluence score may be rewarding.

Masking retrieval heads hurts most where a token can be copied from earlier in the document, so a score can
rank templated pages (repeated fields, link menus, tables) first. These features are computed while scoring,
from the scored token ids and their decoded text, without another forward pass:

- `repeat3_share`: share of the predicted tokens that continue an earlier exact 3-gram of the same document's
  scored tokens (token t is flagged when (ids[t-2], ids[t-1], ids[t]) already ended at some s < t);
- `repeat3_gap_share`: share of the loss gap sum(l_ref - l_base) those flagged tokens carry (the engine sums
  the flagged tokens' losses; NaN when the gap is 0; outside [0, 1] when the gap has mixed signs);
- `repeated_line_share`: characters in non-empty lines (stripped) whose text occurs more than once in the
  document, over the characters of all non-empty lines;
- `markup_share`: share of non-empty lines that look like a list item (`- `, `* `, `• `, `1. `, `2) `), a
  table row (two or more `|` or tab separators) or a link menu (three or more short items separated by
  `|`, `·`, `»`, `›` or ` / `).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

FEATURES = ("repeat3_share", "repeat3_gap_share", "repeated_line_share", "markup_share")
LIST_ITEM = re.compile(r"^\s*(?:[-*•+·▪►]|\d{1,3}[.)])\s+\S")
MENU_SEPARATOR = re.compile(r"\s*(?:\||·|»|›|\s/\s)\s*")
MENU_ITEM_WORDS = 4  # a menu entry is at most this many words


ID_BITS = 21  # token ids below 2**21 pack three to an int64 key


def gram_keys(a: np.ndarray) -> np.ndarray:
    """(T,) token ids -> (T-2,) one comparable key per 3-gram (ending at t = index + 2): three ids packed
    into an int64 when they fit in ID_BITS each, else the three ids viewed as one opaque 24-byte value."""
    if a.min() >= 0 and a.max() < 2**ID_BITS:
        return (a[:-2] << (2 * ID_BITS)) | (a[1:-1] << ID_BITS) | a[2:]
    grams = np.ascontiguousarray(np.stack([a[:-2], a[1:-1], a[2:]], axis=1))  # (T-2, 3)
    return grams.view(np.dtype((np.void, grams.dtype.itemsize * 3)))[:, 0]


def repeat3_flags(ids) -> np.ndarray:
    """(T,) bool: token t continues an earlier exact 3-gram of `ids` (the 3-gram ending at t ended before).
    Vectorized: a 3-gram is flagged where its first occurrence (np.unique's return_index) is earlier."""
    a = np.asarray(ids, dtype=np.int64)
    flags = np.zeros(len(a), dtype=bool)
    if len(a) < 4:  # one or no 3-gram: nothing can repeat
        return flags
    _, first, inverse = np.unique(gram_keys(a), return_index=True, return_inverse=True)
    flags[2:] = first[inverse.ravel()] < np.arange(len(a) - 2)
    return flags


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def repeated_line_share(text: str) -> float:
    """Characters of non-empty lines that occur more than once, over the characters of all non-empty lines."""
    lines = _lines(text)
    total = sum(len(line) for line in lines)
    if not total:
        return 0.0
    counts = Counter(lines)
    return sum(len(line) for line in lines if counts[line] > 1) / total


def is_markup_line(line: str) -> bool:
    """A list item, a table row or a link menu (see the module docstring)."""
    if LIST_ITEM.match(line) or line.count("|") >= 2 or line.count("\t") >= 2:
        return True
    items = [item for item in MENU_SEPARATOR.split(line) if item]
    return len(items) >= 3 and all(len(item.split()) <= MENU_ITEM_WORDS for item in items)


def markup_share(text: str) -> float:
    """Share of non-empty lines that are list items, table rows or link menus."""
    lines = _lines(text)
    return sum(map(is_markup_line, lines)) / len(lines) if lines else 0.0


def text_features(texts: list[str]) -> dict[str, np.ndarray]:
    """The two line-level features of each text: {name: (N,) float64}."""
    return {
        "repeated_line_share": np.array([repeated_line_share(t) for t in texts], dtype=np.float64),
        "markup_share": np.array([markup_share(t) for t in texts], dtype=np.float64),
    }
