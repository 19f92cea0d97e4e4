"""Synthetic inputs of the load benchmark (benchmarks/graph_load.py): a corpus with bad rows, a tiny random
model with the real SmolLM2 tokenizer, and score tables of any size for the cut alone.

The corpus: `docs` documents in `shards` shards over four domain folders, Parquet (zstd) and JSON Lines
(`.jsonl.zst`) alternating; lengths log-normal (median 2,000 characters, clipped to 200-50,000), windows of a
block of generated sentences; about `bad_frac` of the rows bad, one kind per row in turn: empty text, an id
repeated from an earlier row, invalid UTF-8 (Parquet: bytes in a string column; JSON Lines: a lone surrogate
escape) and, in JSON Lines, a line cut short (broken JSON). `write_corpus` returns each shard's rows and bad
rows by kind, so a run can be checked against what was written (documents in = scored + quarantined).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from shard_memory import text_block  # a block of generated sentences; documents are windows of it

DOMAINS = ("web", "code", "math", "wiki")
MIN_CHARS, MAX_CHARS, MEDIAN_CHARS, SIGMA = 200, 50_000, 2_000, 1.0
BAD_KINDS = ("empty text", "duplicate id", "invalid UTF-8", "broken JSON line")


def doc_length(rng: random.Random) -> int:
    return int(min(MAX_CHARS, max(MIN_CHARS, rng.lognormvariate(math.log(MEDIAN_CHARS), SIGMA))))


def shard_path(root: Path, i: int) -> Path:
    domain = DOMAINS[i % len(DOMAINS)]
    suffix = "parquet" if (i // len(DOMAINS)) % 2 == 0 else "jsonl.zst"
    return root / domain / f"{domain}-{i:05d}.{suffix}"


def shard_key(root: Path, path: Path) -> str:
    rel = path.relative_to(root)
    return f"{rel.parent}__{rel.name.split('.')[0]}"


def shard_rows(rng: random.Random, block: str, i: int, n: int, bad_frac: float, jsonl: bool):
    """(ids, texts (str, or bytes for invalid UTF-8), bad kind per row or None), for shard `i`."""
    domain = DOMAINS[i % len(DOMAINS)]
    kinds = [k for k in BAD_KINDS if jsonl or k != "broken JSON line"]
    ids, texts, bad = [], [], []
    turn = i
    for r in range(n):
        length = doc_length(rng)
        off = rng.randrange(0, len(block) - length)
        ids.append(f"{domain}-{i:05d}-{r:06d}")
        texts.append(block[off : off + length])
        bad.append(None)
        if r > 0 and rng.random() < bad_frac:
            kind = kinds[turn % len(kinds)]
            turn += 1
            bad[r] = kind
            if kind == "empty text":
                texts[r] = ""
            elif kind == "duplicate id":
                ids[r] = ids[rng.randrange(0, r)]
                if bad[ids.index(ids[r])] is not None:  # repeat only a good row's id: one reason per row
                    ids[r], bad[r] = f"{domain}-{i:05d}-{r:06d}", None
            elif kind == "invalid UTF-8":
                texts[r] = texts[r][:100].encode() + b" \xff\xfe bad bytes " + texts[r][100:200].encode()
    return ids, texts, bad


def write_parquet_shard(path: Path, domain: str, ids, texts) -> None:
    """A string column holding invalid UTF-8 where a row has bytes (a writer that skipped validation)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = pa.array([t if isinstance(t, bytes) else t.encode() for t in texts], pa.binary())
    text = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # no validation, on purpose
    table = pa.table({"id": ids, "text": text, "domain": [domain] * len(ids)})
    pq.write_table(table, path, compression="zstd", row_group_size=1024)


def write_jsonl_shard(path: Path, domain: str, ids, texts, bad) -> None:
    import pyarrow as pa

    with pa.CompressedOutputStream(str(path), "zstd") as out:
        for ident, text, kind in zip(ids, texts, bad, strict=True):
            if isinstance(text, bytes):  # JSON carries invalid UTF-8 as a lone surrogate escape
                line = json.dumps(
                    {"id": ident, "text": "bad \udc80 surrogate " + text[:50].decode("latin-1")}
                )
            else:
                line = json.dumps({"id": ident, "text": text, "domain": domain})
            if kind == "broken JSON line":
                line = line[: len(line) // 2]
            out.write(line.encode() + b"\n")


def write_corpus(root: Path, docs: int, shards: int, bad_frac: float = 0.005, seed: int = 0) -> dict:
    """The corpus under `root` (kept when `root/corpus.json` says it has these sizes); its description:
    per shard key, the file, rows and bad rows by kind."""
    meta_file = root / "corpus.json"
    want = {"docs": docs, "shards": shards, "bad_frac": bad_frac, "seed": seed}
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if meta["params"] == want:
            return meta
    block = text_block(seed, 2 * MAX_CHARS + 4_000_000)
    described = {}
    for i in range(shards):
        n = docs // shards + (1 if i < docs % shards else 0)
        path = shard_path(root, i)
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = random.Random(seed * 1_000_003 + i)
        jsonl = path.name.endswith(".jsonl.zst")
        ids, texts, bad = shard_rows(rng, block, i, n, bad_frac, jsonl)
        domain = DOMAINS[i % len(DOMAINS)]
        if jsonl:
            write_jsonl_shard(path, domain, ids, texts, bad)
        else:
            write_parquet_shard(path, domain, ids, texts)
        kinds = {k: bad.count(k) for k in BAD_KINDS if bad.count(k)}
        described[shard_key(root, path)] = {"path": str(path), "rows": n, "bad": kinds}
    meta = {"params": want, "shards": described}
    meta_file.write_text(json.dumps(meta, indent=1))
    return meta


def tiny_model(folder: Path, hidden: int = 32, layers: int = 4, seed: int = 0) -> Path:
    """A random-weight Llama (`layers` x 4 heads, 2 KV heads, width `hidden`) with SmolLM2-135M's tokenizer
    (from the model cache `make setup` filled), saved to `folder` as a model spec `load_model` reads."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from attention_influence.influence.models import resolve_spec
    from attention_influence.settings import model_cache_from_env

    target, _ = resolve_spec("smollm2-135m", model_cache_from_env())
    tokenizer = AutoTokenizer.from_pretrained(target)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
