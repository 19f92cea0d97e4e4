"""The synthetic 3-shot key-value retrieval probes of appendix A.

Each probe: a JSON object of 32-char random alphanumeric keys mapping to natural sentences from the corpus
(each at most 30 tokens), three demonstrations (key -> value), then the query key. The whole sample,
prompt plus answer, is filled with pairs up to, never over, the token budget.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from attention_influence.io.hashing import sha256_hex

PROBE_SET_VERSION = "1"

HEADER = (
    "Please extract the value corresponding to the specified key from the following JSON object. "
    "Output only the value of the corresponding key and nothing else. The JSON data is as follows:\n"
)
KEY_CHARS = string.ascii_letters + string.digits
SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
MAX_REDRAWS = 20  # `build_probe`: draws of a probe whose 3-shot part does not fit, before giving up
CLEAN_SENTENCE = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'()%$&+\-/.!?]+[.!?]$")


@dataclass
class Probe:
    prompt: str
    answer: str
    prompt_ids: list[int]
    answer_ids: list[int]
    key: str
    n_pairs: int
    seed: int
    index: int

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.answer_ids)


def extract_sentences(
    texts: Iterable[str], tokenizer, max_tokens: int = 30, min_tokens: int = 6, limit: int = 20000
) -> list[str]:
    """Natural-language sentences of min..max tokens, in first-seen order, without duplicates.

    Only plain prose is kept (no quotes, backslashes, braces or newlines), so a value reads the same inside
    the JSON context as in the answer.
    """
    seen: dict[str, None] = {}
    for text in texts:
        if not isinstance(text, str):
            continue
        for sent in SENTENCE_SPLIT.split(text):
            sent = sent.strip()
            if 20 <= len(sent) <= 200 and CLEAN_SENTENCE.match(sent) and sent not in seen:
                seen[sent] = None
        if len(seen) >= limit:
            break
    candidates = list(seen)
    if not candidates:
        return []
    lengths = [len(ids) for ids in tokenizer(candidates, add_special_tokens=False).input_ids]
    return [s for s, n in zip(candidates, lengths, strict=True) if min_tokens <= n <= max_tokens]


def random_key(rng: random.Random) -> str:
    return "".join(rng.choices(KEY_CHARS, k=32))


def render(pairs: list[tuple[str, str]], shots: list[tuple[str, str]], query_key: str) -> str:
    context = json.dumps(dict(pairs), ensure_ascii=False)
    demos = "".join(f"key: {k}\nanswer: {v}\n" for k, v in shots)
    return f"{HEADER}{context}\n\n{demos}key: {query_key}\nanswer:"


def build_probe(pool: list[str], tokenizer, max_tokens: int, seed: int, index: int) -> Probe:
    """One probe: the needle and 3 demonstration pairs, then filler pairs until the budget is reached.

    Near the 3-shot minimum (430 tokens on average with SmolLM2's tokenizer, up to ~530 for the longest
    sentences) a draw whose four pairs alone pass the budget is drawn again, from `seed:index:r` (r = 1, 2,
    ...); a probe that fits on the first draw is the probe it always was."""
    shortest = None
    for redraw in range(MAX_REDRAWS + 1):
        rng = random.Random(f"{seed}:{index}" + (f":{redraw}" if redraw else ""))
        probe, n_tokens = _draw_probe(pool, tokenizer, max_tokens, rng, seed, index)
        if probe is not None:
            return probe
        shortest = n_tokens if shortest is None else min(shortest, n_tokens)
    raise ValueError(
        f"max_tokens={max_tokens} is too small for a 3-shot probe (the shortest of {MAX_REDRAWS + 1} draws "
        f"has {shortest} tokens)"
    )


def _draw_probe(
    pool: list[str], tokenizer, max_tokens: int, rng: random.Random, seed: int, index: int
) -> tuple[Probe | None, int]:
    """One draw of `build_probe`: the probe, or None and the tokens of its 3-shot part when that alone passes
    the budget."""
    order = rng.sample(range(len(pool)), len(pool))
    values = [pool[i] for i in order]
    needle = values[0]
    answer = " " + needle
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids
    pairs = [(random_key(rng), v) for v in values[:4]]
    shot_pairs = pairs[1:4]
    fixed = len(tokenizer(render(pairs, shot_pairs, pairs[0][0]), add_special_tokens=True).input_ids)
    used = fixed + len(answer_ids)
    # filler pairs, costed one by one; the exact total is checked on the rendered prompt below
    for v in values[4:]:
        pair = (random_key(rng), v)
        cost = len(
            tokenizer(
                json.dumps(dict([pair]), ensure_ascii=False)[1:-1] + ", ", add_special_tokens=False
            ).input_ids
        )
        if used + cost > max_tokens:
            break
        pairs.append(pair)
        used += cost
    query_key = pairs[0][0]
    body = pairs[:]
    rng.shuffle(body)
    while True:
        prompt = render(body, shot_pairs, query_key)
        prompt_ids = tokenizer(prompt, add_special_tokens=True).input_ids
        if len(prompt_ids) + len(answer_ids) <= max_tokens:
            break
        drop = next((i for i in range(len(body) - 1, -1, -1) if body[i] not in pairs[:4]), None)
        if drop is None:
            return None, len(prompt_ids) + len(answer_ids)
        body.pop(drop)
    probe = Probe(
        prompt=prompt,
        answer=answer,
        prompt_ids=prompt_ids,
        answer_ids=answer_ids,
        key=query_key,
        n_pairs=len(body),
        seed=seed,
        index=index,
    )
    return probe, probe.n_tokens


def build_probes(
    sentences: list[str], tokenizer, n: int, max_tokens: int, seed: int = 0, start: int = 0
) -> list[Probe]:
    """`n` reproducible probes; `start` offsets the probe index so held-out probes never repeat ranking
    ones."""
    pool = list(dict.fromkeys(sentences))
    if len(pool) < 8:
        raise ValueError(
            f"need at least 8 distinct sentences of <=30 tokens to build probes, got {len(pool)}"
        )
    return [build_probe(pool, tokenizer, max_tokens, seed, start + i) for i in range(n)]


def draw_seeds(seed: int, draws: int) -> list[int]:
    """The probe seed of each draw: `seed` for the first (the probe set of one draw), then the next ones."""
    return [seed + d for d in range(draws)]


def probes_by_draw(probes: list[Probe]) -> list[list[Probe]]:
    """The probes of each draw (grouped by their seed, in the order the seeds first appear)."""
    groups: dict[int, list[Probe]] = {}
    for p in probes:
        groups.setdefault(p.seed, []).append(p)
    return list(groups.values())


def probes_to_rows(probes: list[Probe]) -> list[dict]:
    return [asdict(p) for p in probes]


def probes_to_frame(probes: list[Probe]):
    import polars as pl

    return pl.DataFrame(
        probes_to_rows(probes),
        schema_overrides={"prompt_ids": pl.List(pl.Int64), "answer_ids": pl.List(pl.Int64)},
    )


def probes_from_frame(df) -> list[Probe]:
    return [Probe(**row) for row in df.iter_rows(named=True)]


def probe_set_digest(probes: list[Probe]) -> str:
    """Content hash: the probe set's data version."""
    chunks = [json.dumps([p.prompt_ids, p.answer_ids]).encode() for p in probes]
    return sha256_hex([PROBE_SET_VERSION.encode(), *chunks], 16)
