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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FEATURES = ("repeat3_share", "repeat3_gap_share", "repeated_line_share", "markup_share")
# Python's str.isspace() characters, spelled out so that the RE2 regexes pyarrow runs split, strip and count
# exactly where Python would (and its splitlines() breaks besides \n)
SPACE_CODES = [*range(0x09, 0x0E), *range(0x1C, 0x21), 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B)]
SPACE_CODES += [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
SPACE_CHARS = "".join(map(chr, SPACE_CODES))
SPACE = "".join(f"\\x{{{c:x}}}" for c in SPACE_CODES)  # inside a [...] class
BREAK_CODES = (0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)
LINE_BREAK = "\\r\\n|[" + "".join(f"\\x{{{c:x}}}" for c in BREAK_CODES) + "]"
LIST_ITEM = f"^[{SPACE}]*(?:[-*•+·▪►]|\\p{{Nd}}{{1,3}}[.)])[{SPACE}]+[^{SPACE}]"
MENU_SEPARATOR = f"[{SPACE}]*(?:\\||·|»|›|[{SPACE}]/[{SPACE}])[{SPACE}]*"
MENU_ITEM_WORDS = 4  # a menu entry is at most this many words
WORD = f"[^{SPACE}]+"
LONG_ITEM = f"{WORD}(?:[{SPACE}]+{WORD}){{{MENU_ITEM_WORDS}}}"  # more than MENU_ITEM_WORDS words


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


def repeat3_flags_flat(flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """`repeat3_flags` of many documents at once: (N,) ids laid end to end, (D,) lengths -> (N,) bool.
    One sort for the whole chunk instead of one per document: the 3-grams are sorted by (document, key) in a
    stable sort (position order kept), and every one but the first of a run of equal (document, key) is a
    repeat. Document and three ids pack into one int64 key where they fit (a vocabulary under 2**16 and a
    few thousand documents), else the sort takes them as separate keys."""
    a = np.asarray(flat, dtype=np.int64)
    n = len(a)
    flags = np.zeros(n, dtype=bool)
    if n < 3:
        return flags
    if a.min() < 0 or a.max() >= 2**ID_BITS:  # opaque keys do not sort as numbers: per document
        ends = np.cumsum(lengths)
        return np.concatenate([repeat3_flags(a[e - k : e]) for e, k in zip(ends, lengths, strict=True)])
    doc = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # (N,)
    inside = doc[:-2] == doc[2:]  # (N-2,) the 3-gram ending at index + 2 lies within one document
    end, owner = np.arange(2, n)[inside], doc[2:][inside]
    bits = max(int(a.max()).bit_length(), 1)
    if 3 * bits + max(len(lengths).bit_length(), 1) <= 63:
        keys = (owner << (3 * bits)) | (a[end - 2] << (2 * bits)) | (a[end - 1] << bits) | a[end]
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        repeat = np.zeros(len(order), dtype=bool)
        repeat[1:] = sorted_keys[1:] == sorted_keys[:-1]
    else:
        keys = gram_keys(a)[inside]
        order = np.lexsort((end, keys, owner))
        k, o = keys[order], owner[order]
        repeat = np.zeros(len(order), dtype=bool)
        repeat[1:] = (k[1:] == k[:-1]) & (o[1:] == o[:-1])
    flags[end[order[repeat]]] = True
    return flags


def _lines(texts: list[str]) -> tuple[np.ndarray, pa.Array]:
    """The non-empty stripped lines of all texts, as Python's splitlines() and strip() cut them: (M,) the
    index of each line's text, (M,) the lines."""
    arr = pa.array(texts, pa.large_string())
    split = pc.split_pattern(pc.replace_substring_regex(arr, LINE_BREAK, "\n"), "\n")
    doc = pc.list_parent_indices(split).to_numpy()
    lines = pc.utf8_trim(pc.list_flatten(split), SPACE_CHARS)
    keep = pc.not_equal(lines, "").to_numpy(zero_copy_only=False)
    return doc[keep], lines.filter(pa.array(keep))


def _is_markup(lines: pa.Array) -> np.ndarray:
    """(M,) bool: each line is a list item, a table row or a link menu (see the module docstring)."""
    n = len(lines)
    items = pc.split_pattern_regex(lines, MENU_SEPARATOR)  # re.split: the text between separators
    owner, item = pc.list_parent_indices(items).to_numpy(), pc.list_flatten(items)
    real = pc.not_equal(item, "").to_numpy(zero_copy_only=False)
    menu = np.bincount(owner[real], minlength=n) >= 3  # (M,) so far: three items or more
    candidate = real & menu[owner]  # the words of the few items that could make a menu
    long = np.zeros(len(real), dtype=bool)
    long[candidate] = pc.match_substring_regex(item.filter(pa.array(candidate)), LONG_ITEM).to_numpy(
        zero_copy_only=False
    )
    menu &= np.bincount(owner[long], minlength=n) == 0
    pipes, tabs = (pc.count_substring(lines, c).to_numpy() for c in ("|", "\t"))
    listed = pc.match_substring_regex(lines, LIST_ITEM).to_numpy(zero_copy_only=False)
    return listed | (pipes >= 2) | (tabs >= 2) | menu


def text_features(texts: list[str]) -> dict[str, np.ndarray]:
    """The two line-level features of each text: {name: (N,) float64}. Computed for a whole chunk at once
    (pyarrow's kernels, the GIL released; per text and line in Python this was the largest share of
    preparation after tokenizing: docs/performance.md)."""
    n = len(texts)
    if n == 0:
        return {"repeated_line_share": np.zeros(0), "markup_share": np.zeros(0)}
    doc, lines = _lines(texts)
    chars = pc.utf8_length(lines).to_numpy().astype(np.float64)  # (M,) code points, like len()
    code = pc.dictionary_encode(lines).indices.to_numpy().astype(np.int64)  # (M,) one code per distinct line
    _, inverse, counts = np.unique(
        doc * (int(code.max(initial=0)) + 1) + code, return_inverse=True, return_counts=True
    )
    repeated = counts[inverse.ravel()] > 1  # (M,) the same line occurs again in its text
    total = np.bincount(doc, weights=chars, minlength=n)
    again = np.bincount(doc[repeated], weights=chars[repeated], minlength=n)
    markup = np.bincount(doc, weights=_is_markup(lines), minlength=n)
    count = np.bincount(doc, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "repeated_line_share": np.where(total > 0, again / total, 0.0),
            "markup_share": np.where(count > 0, markup / count, 0.0),
        }


def repeated_line_share(text: str) -> float:
    """Characters of non-empty lines that occur more than once, over the characters of all non-empty lines."""
    return float(text_features([text])["repeated_line_share"][0])


def markup_share(text: str) -> float:
    """Share of non-empty lines that are list items, table rows or link menus."""
    return float(text_features([text])["markup_share"][0])


def is_markup_line(line: str) -> bool:
    """A list item, a table row or a link menu (see the module docstring)."""
    return bool(_is_markup(pa.array([line], pa.large_string()))[0])
