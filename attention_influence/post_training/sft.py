"""SFT shards: reading, validation, rendering and step segmentation of post-training samples.

A shard is Parquet or JSON lines (plain or compressed) with either a `messages` column (a list of {role,
content}) or a prompt and a response column: the configured ones, else `prompt` / `response`, `question` /
`answer` (GSM8K) or `instruction` [+ `input`] / `output` (Alpaca), recognized without settings. The response
is the last assistant turn; earlier turns are context. A sample is rendered with the tokenizer's chat
template; a tokenizer without one (the GGUF-converted or tiny test tokenizers) gets FALLBACK_TEMPLATE,
`<|role|>\\n content \\n` per turn.

Steps: the response is cut into consecutive character spans that cover it exactly (no gaps, no overlaps).
`lines` (default): every line that is not blank starts a step (one GSM8K solution line is one step; blank
lines stay with the step above). `blank_lines`: a step starts after a blank line (paragraphs of long traces).
Under both rules a line starting with `####` (GSM8K's final answer) starts a step of its own. Character
spans map to token spans through the tokenizer's offset mapping: a token belongs to the step holding its first
character, so the token spans are consecutive and cover the response tokens too.

Every input row ends up either rendered or quarantined with a reason (QUARANTINE_REASONS), so rows in =
samples + quarantined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attention_influence.shards.rows import InputError

ROLES = ("system", "user", "assistant", "tool")
STEP_RULES = ("lines", "blank_lines")
# prompt / response layouts recognized without settings, in this order (`instruction` takes an optional
# `input`, appended to it after a blank line, as in Alpaca)
LAYOUTS = (("prompt", "response"), ("question", "answer"), ("instruction", "output"))
FALLBACK_TEMPLATE = "<|{role}|>\n{content}\n"  # per turn, when the tokenizer has no chat template
FALLBACK_GENERATION = "<|assistant|>\n"
QUARANTINE_REASONS = (
    "malformed messages",
    "unknown role",
    "no assistant turn",
    "empty response",
    "missing prompt",
    "missing id",
    "duplicate id",
    "prompt fills the token budget",
    "template does not render the response verbatim",
)


class SFTInputError(InputError):
    """The shard cannot be read at all (missing file or column, bad JSON line); the message names the file
    and row."""


@dataclass(frozen=True)
class SFTFormat:
    """Which columns hold what; `messages` wins when the shard has it."""

    messages_column: str = "messages"
    prompt_column: str = "question"
    response_column: str = "answer"
    id_column: str = "id"  # absent: ids are `<shard>-<row>`
    source_column: str = ""  # optional grouping for a per-source selection ("" : none)
    step_rule: str = "lines"
    max_tokens: int = 512  # the rendered sample is cut here; what is cut is reported per sample

    @classmethod
    def from_fields(cls, obj) -> SFTFormat:
        """From anything with attributes of the same names (the CLI's arguments, the Dagster resource);
        missing ones keep their defaults."""
        names = [f for f in cls.__dataclass_fields__ if hasattr(obj, f)]
        return cls(**{f: getattr(obj, f) for f in names})

    def __post_init__(self) -> None:
        if self.step_rule not in STEP_RULES:
            raise ValueError(
                f"step rule {self.step_rule!r} (post_training.step_rule): "
                f"choose one of {', '.join(STEP_RULES)}"
            )
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {self.max_tokens}")


@dataclass
class SFTRow:
    row: int  # 0-based row of the shard (JSON lines: line number - 1 over non-empty lines)
    id: str | None
    source: str | None
    messages: list | None  # [{role, content}] (prompt/response shards are turned into two turns)
    reason: str | None = None  # why the row is quarantined


@dataclass
class Sample:
    """A rendered sample: the tokens scored, and where the response and its steps are in them."""

    row: int
    id: str
    source: str | None
    text: str  # the whole rendered sample
    response: str
    response_start: int  # character offset of the response in `text`
    input_ids: list[int]  # tokens of `text`, cut to max_tokens
    step_chars: list[tuple[int, int]]  # per step, [start, end) within the response
    step_tokens: list[tuple[int, int]]  # per step, [start, end) within input_ids (empty where cut)
    n_response_tokens_full: int  # before the cut
    cut: str | None = None  # what the token budget cut, if anything
    extra: dict = field(default_factory=dict)

    @property
    def response_tokens(self) -> tuple[int, int]:
        return self.step_tokens[0][0], self.step_tokens[-1][1]


# ------------------------------------------------------------------------------------------------ reading


def list_sft_shards(pattern: str) -> list[tuple[str, Path, str]]:
    """(key, path, fingerprint) of every SFT file the glob (or file, or folder) names, sorted by key: the
    corpus's shard listing (`io.corpus.list_shards`: formats, fingerprints) with keys from the file name
    alone; plain `.json` files are JSON Lines. No match: []."""
    from attention_influence.io.corpus import CorpusError, list_shards

    try:
        shards = list_shards(str(Path(pattern).expanduser()), keys="name", json_files=True)
    except CorpusError as exc:
        if "matches no" in str(exc) or "does not exist" in str(exc):
            return []
        raise SFTInputError(str(exc)) from exc
    return [(s.key, Path(s.uri).resolve(), s.fingerprint) for s in shards if s.format in ("parquet", "jsonl")]


def _json_records(path: Path, limit: int | None) -> list[dict]:
    """The JSON objects of a JSON Lines file, plain or compressed, read by the corpus's reader
    (`shards.jsonl.json_objects`); a line that is no JSON object fails the shard, naming the line."""
    from attention_influence.io.formats import ShardFormat, split_compression
    from attention_influence.shards.jsonl import json_objects

    fmt = ShardFormat("jsonl", split_compression(path.name)[1])
    rows = []
    try:
        for _, rec in json_objects(str(path), fmt, limit):
            if isinstance(rec, tuple):  # (row, id, text, domain, utf8_error, reason, "line N: detail")
                line, _, detail = rec[-1].partition(": ")
                raise SFTInputError(f"{path}: {line}: {rec[-2]}: {detail}")
            rows.append(rec)
    except SFTInputError:
        raise
    except InputError as exc:  # a truncated or corrupt compressed file
        raise SFTInputError(str(exc)) from exc
    return rows


def _read_records(path: Path, limit: int | None) -> list[dict]:
    if not path.is_file():
        raise SFTInputError(f"{path}: no such SFT shard")
    if path.suffix in (".parquet", ".pq"):
        import polars as pl

        try:
            df = pl.read_parquet(path, n_rows=limit)
        except Exception as exc:  # noqa: BLE001 - corrupt file: name it
            raise SFTInputError(f"{path}: cannot read Parquet: {exc}") from exc
        return df.to_dicts()
    return _json_records(path, limit)


def _check_messages(messages) -> str | None:
    if not isinstance(messages, list | tuple) or not messages:
        return "malformed messages: not a non-empty list of {role, content}"
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            return f"malformed messages: turn {i} is not {{role: str, content: str}}"
        if m["role"] not in ROLES:
            return f"unknown role {m['role']!r} in turn {i} (known: {', '.join(ROLES)})"
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant:
        return "no assistant turn"
    if not messages[assistant[-1]]["content"].strip():
        return f"empty response (assistant turn {assistant[-1]})"
    return None


def detect_layout(path: Path, fmt: SFTFormat, columns: set[str]) -> tuple[str, str] | None:
    """None for a messages shard, else its (prompt, response) columns: the configured ones, else the first
    known layout (LAYOUTS) the shard has. Any other layout is an error listing the columns found and the
    settings to use."""
    if not columns or fmt.messages_column in columns:
        return None
    for layout in ((fmt.prompt_column, fmt.response_column), *LAYOUTS):
        if set(layout) <= columns:
            return layout
    known = "; ".join(f"{p!r} + {r!r}" for p, r in LAYOUTS)
    raise SFTInputError(
        f"{path}: row 0 has neither a {fmt.messages_column!r} column nor {fmt.prompt_column!r} + "
        f"{fmt.response_column!r} columns, nor a known layout ({known}, with an optional 'input'); it has: "
        f"{', '.join(sorted(columns))}. Set post_training.messages_column, or post_training.prompt_column "
        "and post_training.response_column (CLI --messages-column, --prompt-column, --response-column)"
    )


def _prompt(rec: dict, layout: tuple[str, str]):
    """The prompt of a prompt/response row; Alpaca's `input`, when there is one, follows the instruction."""
    prompt = rec.get(layout[0])
    extra = rec.get("input") if layout[0] == "instruction" else None
    if isinstance(prompt, str) and isinstance(extra, str) and extra.strip():
        return f"{prompt}\n\n{extra}"
    return prompt


def read_sft(path: str | Path, fmt: SFTFormat, limit: int | None = None) -> list[SFTRow]:
    """Every row of the shard (the first `limit` only), validated: a row that cannot become a sample carries
    its reason. A missing column is an error naming the file and the columns it has."""
    path = Path(path)
    records = _read_records(path, limit)
    layout = detect_layout(path, fmt, set(records[0]) if records else set())
    rows: list[SFTRow] = []
    first_row_of: dict[str, int] = {}
    for i, rec in enumerate(records):
        has_id = fmt.id_column in rec
        rid = rec.get(fmt.id_column) if has_id else f"{path.stem}-{i:06d}"
        source = rec.get(fmt.source_column) if fmt.source_column else None
        if layout is None:
            messages = rec.get(fmt.messages_column)
            if isinstance(messages, list | tuple):
                messages = [dict(m) if isinstance(m, dict) else m for m in messages]
            reason = _check_messages(messages)
        else:
            prompt, response = _prompt(rec, layout), rec.get(layout[1])
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            if not isinstance(prompt, str) or not prompt.strip():
                reason = f"missing prompt ({layout[0]!r} is empty or not a string)"
            elif not isinstance(response, str) or not response.strip():
                reason = f"empty response ({layout[1]!r} is empty or not a string)"
            else:
                reason = None
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            reason, rid = reason or f"missing id ({fmt.id_column!r} is null)", None
        elif str(rid) in first_row_of:
            reason = f"duplicate id {str(rid)!r} (first at row {first_row_of[str(rid)]})"
        else:
            first_row_of[str(rid)] = i
        rows.append(
            SFTRow(
                i,
                None if rid is None else str(rid),
                None if source is None else str(source),
                messages,
                reason,
            )
        )
    return rows


# ------------------------------------------------------------------------------------------------ rendering


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(messages: list[dict], tokenizer) -> tuple[str, int, int]:
    """The sample's text up to and including its last assistant turn, and the response's [start, end)
    characters in it. With a chat template the context is rendered with the generation prompt, so the
    response starts where the template hands over to the assistant; the template must then reproduce the
    response verbatim (else ValueError)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    turns = [{"role": m["role"], "content": m["content"]} for m in messages[: last + 1]]
    response = turns[-1]["content"]
    if has_chat_template(tokenizer):
        prefix = tokenizer.apply_chat_template(turns[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(turns, tokenize=False)
    else:
        prefix = "".join(FALLBACK_TEMPLATE.format(**m) for m in turns[:-1]) + FALLBACK_GENERATION
        full = prefix + response + "\n"
    if not full.startswith(prefix + response):
        raise ValueError("template does not render the response verbatim after the generation prompt")
    return full, len(prefix), len(prefix) + len(response)


def step_spans(response: str, rule: str = "lines") -> list[tuple[int, int]]:
    """Consecutive [start, end) character spans covering the response exactly (see the module docstring)."""
    if rule not in STEP_RULES:
        raise ValueError(f"step rule {rule!r}: choose one of {', '.join(STEP_RULES)}")
    starts, pos, prev_blank = [0], 0, False
    lines = response.splitlines(keepends=True)
    seen_text = False
    for line in lines:
        blank = not line.strip()
        begins = (
            seen_text and not blank and (rule == "lines" or prev_blank or line.lstrip().startswith("####"))
        )
        if begins and pos > starts[-1]:
            starts.append(pos)
        seen_text = seen_text or not blank
        prev_blank = blank
        pos += len(line)
    return list(zip(starts, starts[1:] + [len(response)], strict=True))


def token_step_spans(
    offsets: list[tuple[int, int]], response_start: int, response_end: int, char_spans: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Per step, [start, end) in the token sequence: a token belongs to the step holding its first character;
    tokens starting outside the response belong to no step. Spans are consecutive (empty where a step's
    characters all fall inside a token of the step before)."""
    first = np.array([s for s, e in offsets], dtype=np.int64)  # (T,)
    real = np.array([e > s for s, e in offsets], dtype=bool)
    in_resp = np.flatnonzero(real & (first >= response_start) & (first < response_end))
    if len(in_resp) == 0:
        raise ValueError("the response has no tokens")
    lo, hi = int(in_resp[0]), int(in_resp[-1]) + 1
    step_starts = np.array([response_start + a for a, _ in char_spans], dtype=np.int64)  # (S,)
    owner = np.searchsorted(step_starts, first[lo:hi], side="right") - 1  # (n,) step of each token
    owner = np.maximum.accumulate(np.clip(owner, 0, None))  # monotone even for odd offset maps
    S = len(char_spans)
    a = lo + np.searchsorted(owner, np.arange(S), side="left")
    b = lo + np.searchsorted(owner, np.arange(S), side="right")
    return [(int(x), int(y)) for x, y in zip(a, b, strict=True)]


def cut_to_budget(spans: list[tuple[int, int]], max_tokens: int) -> list[tuple[int, int]]:
    return [(min(a, max_tokens), min(b, max_tokens)) for a, b in spans]


def build_sample(row: SFTRow, tokenizer, fmt: SFTFormat) -> Sample:
    """Render, tokenize, segment and cut one valid row; ValueError (a quarantine reason) where it cannot."""
    text, r0, r1 = render(row.messages, tokenizer)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    response = text[r0:r1]
    chars = step_spans(response, fmt.step_rule)
    tokens = token_step_spans(offsets, r0, r1, chars)
    lo, hi = tokens[0][0], tokens[-1][1]
    if lo >= fmt.max_tokens:
        raise ValueError(
            f"prompt fills the token budget: the response starts at token {lo}, max_tokens={fmt.max_tokens}"
        )
    cut = None
    if len(ids) > fmt.max_tokens:
        kept = cut_to_budget(tokens, fmt.max_tokens)
        lost = max(0, hi - fmt.max_tokens)
        if lost:
            partial = next(i for i, (k, t) in enumerate(zip(kept, tokens, strict=True)) if k != t)
            cut = (
                f"cut at max_tokens={fmt.max_tokens}: {lost} of {hi - lo} response tokens dropped; "
                f"steps {partial}..{len(tokens) - 1} of {len(tokens)} partly or wholly unscored"
            )
        else:
            cut = f"cut at max_tokens={fmt.max_tokens}: {len(ids) - fmt.max_tokens} tokens after the response"
        tokens, ids = kept, ids[: fmt.max_tokens]
    return Sample(
        row=row.row,
        id=row.id,
        source=row.source,
        text=text,
        response=response,
        response_start=r0,
        input_ids=ids,
        step_chars=chars,
        step_tokens=tokens,
        n_response_tokens_full=hi - lo,
        cut=cut,
    )


def build_samples(rows: list[SFTRow], tokenizer, fmt: SFTFormat) -> tuple[list[Sample], list[SFTRow]]:
    """(samples, quarantined rows with their reason): every row is in exactly one of the two."""
    samples, quarantined = [], []
    for row in rows:
        if row.reason is not None:
            quarantined.append(row)
            continue
        try:
            samples.append(build_sample(row, tokenizer, fmt))
        except ValueError as exc:
            row.reason = str(exc)
            quarantined.append(row)
    return samples, quarantined
