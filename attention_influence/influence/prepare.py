"""Documents made ready for the model on the host: clipped, tokenized once, cut into pieces with their repeat
flags, and the line features of the text each one is scored on. No torch here, so a worker process that
prepares chunks starts in a fraction of a second (`shards.prefetch`).

A document is scored on its first `max_tokens` tokens (or on all of them, in windows), so a long text is cut
before tokenizing: tokenizing a 10 MB document whole takes ~25 s for nothing. Each text is cut where its own
characters predict max_tokens + CLIP_MARGIN_TOKENS tokens and a little more (`TokenRate`, fitted chunk by
chunk), at white space, so the scored tokens are those of the whole text; a text the cut leaves too short is
cut again at its own characters per token. Documents go through
the Rust tokenizer's batch encode directly (no offsets, no attention masks, both cores); the scored text whose
line features are taken is the text's own bytes of the scored tokens (a Rust decode only for other
tokenizers), the features for a whole chunk at once (`structure.text_features`, pyarrow).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from attention_influence.influence.structure import repeat3_flags_flat, text_features

CLIP_MARGIN_TOKENS = 16  # the cut text keeps this many tokens beyond max_tokens: the cut is far from them
RETRY_MARGIN = 0.15  # a text cut too short is cut again at its own characters per token, this much beyond
MAX_CHARS_PER_TOKEN = 16  # a text is scanned for its bound over at most this many characters per kept token
FIRST_SCAN = 8  # ... and over this many first
SCAN_STRIDE = 4  # the bound's prediction reads every 4th character
# tokens per character by class (letter, digit, space, line break, other ASCII, non-ASCII): the first chunk's
# guess, refitted on every chunk's tokenized documents (`TokenRate`)
CHAR_CLASS = np.full(129, 4, dtype=np.uint8)  # code point (non-ASCII as 128) -> class
CHAR_CLASS[[ord(c) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"]] = 0
CHAR_CLASS[[ord(c) for c in "0123456789"]] = 1
CHAR_CLASS[[ord(" "), ord("\t")]] = 2
CHAR_CLASS[[ord("\n"), ord("\r")]] = 3
CHAR_CLASS[128] = 5
FIRST_RATES = np.array([0.2, 1.2, 0.1, 0.3, 1.0, 1.5])  # (6,) SmolLM2's on English web text and code
FIRST_MARGIN = 0.2  # the first chunk's relative margin over the predicted tokens


@dataclass
class Piece:
    doc: int  # index of the document in the input list
    ids: np.ndarray  # (T,) int32: one window of token ids (>= 2 tokens)
    flags: np.ndarray | None = None  # (T,) bool: the token continues an earlier 3-gram of the document


@dataclass
class Prepared:
    """Documents made ready for the model on the host: their pieces with repeat flags, scored token counts
    and line features. What a prefetch thread or worker process builds while the model runs the previous
    chunk (`shards.job`), so the model's thread only batches and runs."""

    pieces: list[Piece]
    n_tokens: np.ndarray  # (N,) tokens scored per document
    text_features: dict[str, np.ndarray]  # `structure.text_features` of the scored text
    n_docs: int
    max_tokens: int
    windows: bool
    cached: bool = False  # read back from a token cache (`shards.prepare.ChunkPreparer`)


def split_pieces(
    token_lists: Sequence[Sequence[int]], max_tokens: int, windows: bool
) -> tuple[list[Piece], np.ndarray]:
    """Truncate (or window) each document; returns the pieces and each document's scored token count. Each
    piece carries the repeat-3-gram flags of its tokens, found over the document's scored tokens (one sort
    for all documents: `structure.repeat3_flags_flat`)."""
    spans = [np.asarray(ids, dtype=np.int32)[: None if windows else max_tokens] for ids in token_lists]
    lengths = np.array([len(s) for s in spans], dtype=np.int64)  # (D,) scored tokens
    flat = np.concatenate(spans) if spans else np.zeros(0, np.int32)  # (N,)
    flags = repeat3_flags_flat(flat, lengths)  # (N,)
    pieces, offset = [], 0
    for doc, n in enumerate(lengths.tolist()):
        for start in range(0, n, max_tokens):
            end = min(start + max_tokens, n)
            if end - start >= 2:  # a window of one token predicts nothing
                pieces.append(
                    Piece(doc, flat[offset + start : offset + end], flags[offset + start : offset + end])
                )
        offset += n
    return pieces, lengths


def canonical_length(n: int) -> int:
    """The padded length of a piece of n tokens in canonical batches: n rounded up to 1/8 of its power of two
    (at least 16 tokens), so at most 12.5% of a long row is padding."""
    step = max(16, 1 << max(n.bit_length() - 4, 0))
    return -(-n // step) * step


def canonical_buckets(pieces: list[Piece], batch_tokens: int) -> Iterator[list[Piece]]:
    """Batches whose padded length depends on their pieces' own lengths only (`canonical_length`): a piece is
    computed at the same shape whatever else is scored with it, so its losses do not depend on the batch
    size or on its neighbours (padding to another length moves a float32 loss by ~1e-6, a bf16 score by up
    to ~5e-3: docs/performance.md). Longest first; as many rows of one length as batch_tokens holds."""
    groups: dict[int, list[Piece]] = {}
    for p in sorted(pieces, key=lambda p: -len(p.ids)):
        groups.setdefault(canonical_length(len(p.ids)), []).append(p)
    for length, group in groups.items():
        rows = max(1, batch_tokens // length)
        for i in range(0, len(group), rows):
            yield group[i : i + rows]


def use_canonical(setting: bool | None, auto_sized: bool, device_type: str) -> bool:
    """Canonical padded lengths (`canonical_buckets`): as set (`scoring.batch_invariant`), else where the
    batch size is chosen from free GPU memory: it differs between cards and runs, and a score must not
    follow it. Elsewhere the tighter length buckets, and the scores of earlier versions; there a document's
    score moves with its batch's padded length by ~1e-7 in float32 and up to ~5e-3 in bf16
    (docs/performance.md)."""
    return setting if setting is not None else (auto_sized and device_type == "cuda")


def backend(tokenizer):
    """The Rust `tokenizers.Tokenizer` behind a transformers tokenizer (None for a pure-Python one)."""
    inner = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    return inner if hasattr(inner, "encode_batch") else None


def encode(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Token ids of each text with the tokenizer's special tokens, as int32 arrays: the Rust batch encode
    without offsets where there is one (the same ids as `tokenizer(texts).input_ids`)."""
    if not texts:
        return []
    rust = backend(tokenizer)
    if rust is None:
        lists = tokenizer(texts, add_special_tokens=True).input_ids
    else:
        run = getattr(rust, "encode_batch_fast", rust.encode_batch)  # _fast: no offsets (tokenizers >= 0.20)
        lists = [e.ids for e in run(texts, add_special_tokens=True)]
    return [np.array(ids, dtype=np.int32) for ids in lists]


def decode(tokenizer, token_lists: list[np.ndarray]) -> list[str]:
    """The text of token ids, special tokens skipped, as `tokenizer.batch_decode` gives it (Rust, batched)."""
    rust = backend(tokenizer)
    if rust is None or not token_lists:
        return tokenizer.batch_decode([t.tolist() for t in token_lists], skip_special_tokens=True)
    texts = rust.decode_batch([t.tolist() for t in token_lists], skip_special_tokens=True)
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        texts = [tokenizer.clean_up_tokenization(t) for t in texts]
    return texts


def char_codes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The code point of every character of the texts end to end, non-ASCII as 128, (C,) uint32, and where
    each text starts in it, (D + 1,) int64: one encode for a chunk, not one per text."""
    codes = np.frombuffer("".join(texts).encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
    starts = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in texts], out=starts[1:])
    return np.minimum(codes, 128), starts


def cut_at_space(text: str, bound: int) -> str:
    """`text` cut to about `bound` characters, at the first white space from there (within 64 characters):
    a pre-token then ends at the cut, so the tokens before it are those of the whole text."""
    if len(text) <= bound:
        return text
    spaces = [i for i in (text.find(" ", bound, bound + 64), text.find("\n", bound, bound + 64)) if i > 0]
    return text[: min(spaces, default=bound)]


@dataclass
class TokenRate:
    """Tokens per character of each character class, fitted by least squares on the documents tokenized so
    far (each earlier chunk weighs half as much as the next), and the relative margin over a prediction that
    costs the fewest characters tokenized, retries included. A text's own characters predict its tokens to
    ~8% (one rate for all text: ~30%), so each text is cut where its predicted tokens reach max_tokens +
    margin, and few need a second cut."""

    rates: np.ndarray = field(default_factory=lambda: FIRST_RATES.copy())  # (6,)
    margin: float = FIRST_MARGIN
    gram: np.ndarray = field(default_factory=lambda: np.zeros((6, 6)))  # running X^T X
    moment: np.ndarray = field(default_factory=lambda: np.zeros(6))  # running X^T y
    fits: int = 0

    def bounds(self, texts: list[str], tokens: int) -> np.ndarray:
        """(D,) characters of each text predicted to hold `tokens` x (1 + margin) tokens (its length + 1 if
        fewer within MAX_CHARS_PER_TOKEN a token). Scanned over FIRST_SCAN characters a token first (typical
        text needs ~5), the few texts that did not reach it again over the whole range."""
        out = np.zeros(len(texts), dtype=np.int64)
        todo = np.arange(len(texts))
        for per_token in (FIRST_SCAN, MAX_CHARS_PER_TOKEN):
            heads = [texts[i][: tokens * per_token] for i in todo.tolist()]
            ends, sizes = self._reach(heads, tokens * (1 + self.margin))
            done = (ends < sizes) | (sizes < tokens * per_token) | (per_token == MAX_CHARS_PER_TOKEN)
            out[todo[done]] = np.minimum(ends, sizes)[done] + 1
            todo = todo[~done]
            if not todo.size:
                break
        return out

    def _reach(self, texts: list[str], target: float) -> tuple[np.ndarray, np.ndarray]:
        """(D,) the index of each text's character where its predicted tokens reach target (its length if
        never), and (D,) its length: one running sum over the texts end to end, of every SCAN_STRIDE-th
        character's rate (a prediction to ~8% needs no more; a quarter of the memory traffic)."""
        codes, starts = char_codes(texts)  # (C,), (D + 1,)
        rate = self.rates[CHAR_CLASS] * SCAN_STRIDE  # (129,) tokens a sampled character stands for
        reach = np.cumsum(rate[codes[::SCAN_STRIDE]])  # (C / stride,) predicted tokens so far
        first = -(-starts[:-1] // SCAN_STRIDE)  # (D,) each text's first sampled character
        before = np.where(first > 0, reach[np.maximum(first - 1, 0)], 0.0)  # (D,) predicted before each
        ends = np.searchsorted(reach, before + target) * SCAN_STRIDE - starts[:-1]  # (D,)
        return ends, np.diff(starts)

    def fit(self, texts: list[str], ids: list[np.ndarray]) -> None:
        """Refit on a chunk's tokenized (cut) texts, ridge-pulled towards FIRST_RATES where the chunk cannot
        tell the classes apart. The margin is chosen on how far the chunk's tokens fell below the prediction
        of rates fitted without it (the rates it was cut with; for the first chunk, its own fit): the m that
        minimises (1 + m) + P(shortfall > m) x (1 + RETRY_MARGIN), characters tokenized per needed one."""
        codes, starts = char_codes(texts)  # (C,), (D + 1,)
        classes = CHAR_CLASS[codes]  # (C,)
        doc = np.repeat(np.arange(len(texts)), np.diff(starts))  # (C,) each character's text
        counts = np.bincount(doc * 6 + classes, minlength=6 * len(texts)).reshape(-1, 6).astype(np.float64)
        y = np.array([len(i) for i in ids], dtype=np.float64)
        keep = y >= 16
        if keep.sum() < 8:
            return
        x, y = counts[keep], y[keep]
        before = self.rates if self.fits else None
        self.gram = 0.5 * self.gram + x.T @ x
        self.moment = 0.5 * self.moment + x.T @ y
        ridge = 1e-3 * np.trace(self.gram) / 6
        rates = np.linalg.solve(self.gram + ridge * np.eye(6), self.moment + ridge * FIRST_RATES)
        self.rates = np.maximum(rates, 0.01)
        self.fits += 1
        shortfall = (x @ (self.rates if before is None else before) - y) / y  # (D,) > 0: fewer than predicted
        margins = np.quantile(shortfall, np.linspace(0.5, 1.0, 26)).clip(0.02, 1.0)  # (26,)
        cost = 1 + margins + (shortfall[None, :] > margins[:, None]).mean(axis=1) * (1 + RETRY_MARGIN)
        self.margin = float(margins[int(np.argmin(cost))])


_DECODING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> decoding_table


def decoding_table(tokenizer) -> tuple[bool, np.ndarray, np.ndarray]:
    """(whether decode(encode(text)) is the text's own bytes, the ids decode skips as special, each id's
    length in bytes), built once per tokenizer and process (reading the vocabulary takes ~0.1 s, as much as
    preparing a chunk). A byte-level BPE token's string holds one character per byte of its text."""
    try:
        return _DECODING[tokenizer]
    except (KeyError, TypeError):
        pass
    rust = backend(tokenizer)
    if rust is None:
        return False, np.zeros(0, np.int32), np.zeros(0, np.int64)
    from tokenizers import decoders, pre_tokenizers

    lossless = (
        rust.normalizer is None
        and isinstance(rust.decoder, decoders.ByteLevel)
        and isinstance(rust.pre_tokenizer, pre_tokenizers.ByteLevel)
        and not getattr(tokenizer, "clean_up_tokenization_spaces", False)
    )
    added = rust.get_added_tokens_decoder()
    vocab = rust.get_vocab(with_added_tokens=True)
    byte_len = np.zeros(max(vocab.values(), default=0) + 1, dtype=np.int64)
    for token, i in vocab.items():
        byte_len[i] = len(added[i].content.encode("utf-8")) if i in added else len(token)
    special = [i for i, tok in added.items() if tok.special]
    table = lossless, np.array(sorted(special), dtype=np.int32), byte_len
    with contextlib.suppress(TypeError):  # a tokenizer that cannot be weakly referenced: not kept
        _DECODING[tokenizer] = table
    return table


@dataclass
class Preparer:
    """Prepares chunks of texts for a model's tokenizer (`__call__`); picklable, so a worker process can hold
    one. `rate` predicts where to cut each text, learnt from the chunks seen; the tokens it yields never
    depend on it."""

    tokenizer: object
    max_tokens: int
    windows: bool = False
    rate: TokenRate = field(default_factory=TokenRate)
    stats: dict = field(default_factory=lambda: {"chars_tokenized": 0, "tokens": 0, "retried": 0})

    def __post_init__(self) -> None:
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {self.max_tokens}")

    def tokenize(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's ids, a long one cut where it is predicted to hold max_tokens + margin tokens and more
        (unless windowed: every token is scored then); a cut text that came out too short is cut again at its
        own characters per token, RETRY_MARGIN beyond, until it has them or is whole."""
        if self.windows:
            return self._encode(texts)
        need = self.max_tokens + CLIP_MARGIN_TOKENS
        lengths = np.array([len(t) for t in texts], dtype=np.int64)  # (D,)
        bound = np.where(lengths > need, self.rate.bounds(texts, need), lengths)  # (D,)
        cut = [cut_at_space(t, b) for t, b in zip(texts, bound.tolist(), strict=True)]
        ids = self._encode(cut)
        self.rate.fit(cut, ids)
        while short := [i for i, t in enumerate(cut) if len(t) < len(texts[i]) and len(ids[i]) <= need]:
            for i in short:  # this text's own characters per token, and a margin beyond
                own = len(cut[i]) * need * (1 + RETRY_MARGIN) / max(len(ids[i]), 1)
                bound[i] = max(int(own), int(1.25 * len(cut[i]))) + 1
            again = [cut_at_space(texts[i], int(bound[i])) for i in short]
            for i, text, new in zip(short, again, self._encode(again), strict=True):
                cut[i], ids[i] = text, new
            self.stats["retried"] += len(short)
        return ids

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        ids = encode(self.tokenizer, texts)
        self.stats["chars_tokenized"] += sum(map(len, texts))
        self.stats["tokens"] += sum(map(len, ids))
        return ids

    def scored_texts(self, texts: list[str], ids: list[np.ndarray]) -> list[str]:
        """The text each document is scored on, as the decode of its scored tokens would give it: for a
        byte-level tokenizer the scored tokens' bytes of the text itself (no special token among them), else
        the Rust decode of the scored tokens."""
        lossless, special, byte_len = decoding_table(self.tokenizer)
        scored = ids if self.windows else [t[: self.max_tokens] for t in ids]
        if not lossless or not scored:
            return decode(self.tokenizer, scored) if scored else []
        n = np.array([len(t) for t in scored])  # (D,) scored tokens
        bounds = np.concatenate([[0], np.cumsum(n)])  # (D + 1,) each document's tokens in flat
        flat = np.concatenate(scored)  # (N,) the chunk's scored tokens end to end
        redo = np.zeros(len(scored), dtype=bool)  # (D,) a special token among its scored ones
        redo[np.searchsorted(bounds, np.flatnonzero(np.isin(flat, special)), side="right") - 1] = True
        nbytes = np.diff(np.concatenate([[0], np.cumsum(byte_len[flat])])[bounds]).tolist()  # (D,)
        out = list(texts)
        for i in np.flatnonzero(~redo & (n < [len(t) for t in ids])).tolist():
            # truncated: the first bytes of the text, as the decoder joins them (no more characters than
            # bytes)
            out[i] = texts[i][: nbytes[i]].encode("utf-8")[: nbytes[i]].decode("utf-8", errors="replace")
        again = np.flatnonzero(redo).tolist()
        for i, text in zip(again, decode(self.tokenizer, [scored[i] for i in again]), strict=True):
            out[i] = text
        return out

    def __call__(self, texts: list[str]) -> Prepared:
        ids = self.tokenize(texts)
        pieces, n_tokens = split_pieces(ids, self.max_tokens, self.windows)
        features = text_features(self.scored_texts(texts, ids))
        return Prepared(pieces, n_tokens, features, len(texts), self.max_tokens, self.windows)


def prepare_token_lists(
    tokenizer, token_lists: Sequence[Sequence[int]], max_tokens: int, windows: bool = False
) -> Prepared:
    """Already tokenized documents made ready: pieces, repeat flags, and the line features of the decoded
    scored tokens (there is no text to take them from)."""
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    pieces, n_tokens = split_pieces(token_lists, max_tokens, windows)
    arrays = [np.asarray(t, dtype=np.int32)[: None if windows else max_tokens] for t in token_lists]
    features = text_features(decode(tokenizer, arrays))
    return Prepared(pieces, n_tokens, features, len(token_lists), max_tokens, windows)
