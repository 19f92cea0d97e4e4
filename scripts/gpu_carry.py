"""Build `gpu_carry/` (git-ignored): what the GPU check needs on a machine that reaches no registry and takes
at most 64 MiB of working tree. SmolLM2-135M's config.json and tokenizer.json (from the model cache: random
weights are built from the config there, `bench.models.RANDOM_CONFIGS`) and a few MB of sample documents,
`docs/<domain>.parquet` with a `text` column, each text cut to --max-chars. pyarrow only.

    PYTHONPATH=. python scripts/gpu_carry.py [--corpus ../shared/corpus/sample] [--per-domain 160]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from attention_influence.influence.models import resolve_spec

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "gpu_carry"))
    ap.add_argument("--model", default="smollm2-135m", help="the model whose config and tokenizer to carry")
    ap.add_argument("--corpus", default=str(REPO.parent / "shared" / "corpus" / "sample"))
    ap.add_argument("--per-domain", type=int, default=160)
    ap.add_argument("--max-chars", type=int, default=24000, help="enough for 4,096 tokens")
    args = ap.parse_args()
    out = Path(args.out)
    tok = out / "smollm2-135m"
    tok.mkdir(parents=True, exist_ok=True)
    folder = Path(resolve_spec(args.model)[0])
    for name in TOKENIZER_FILES:
        if (folder / name).exists():
            shutil.copy2(folder / name, tok / name)
    docs = out / "docs"
    docs.mkdir(exist_ok=True)
    for domain in sorted(p for p in Path(args.corpus).iterdir() if p.is_dir()):
        texts: list[str] = []
        for f in sorted(domain.glob("*.parquet")):
            column = pq.read_table(f, columns=["text"])["text"].to_pylist()
            texts += [t[: args.max_chars] for t in column if t]
            if len(texts) >= args.per_domain:
                break
        table = pa.table({"text": texts[: args.per_domain]})
        pq.write_table(table, docs / f"{domain.name}.parquet", compression="zstd")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
