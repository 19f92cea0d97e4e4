"""The SFT input of `make demo`: the first N GSM8K training solutions, or an embedded GSM8K-style stand-in.

With `../shared/eval/gsm8k/train.jsonl` beside the checkout, its first N rows are copied to
`<work dir>/sft_input/gsm8k_train.jsonl` (question, answer, id; the calculator annotations `<<48/2=24>>`
removed, as the GSM8K evaluation does). Without it, N generated word problems in the same shape (worked
solution lines, `#### <answer>` last) are written instead (`gsm8k_standin.jsonl`), so a clone without
../shared still demos. The file is rewritten only when its content changes (its partition stays current).

    python -m attention_influence.post_training.sft_demo --out work/sft_input --samples 300
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from attention_influence.evaluation.tasks import read_gsm8k
from attention_influence.settings import DEFAULT_EVAL_DIR

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonah", "Kemi", "Luca")
THINGS = ("apples", "stickers", "marbles", "books", "cookies", "pencils", "shells", "coins")


def standin_samples(n: int, seed: int = 0) -> list[dict]:
    """n GSM8K-style problems with two to four worked steps and a `#### answer` line."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        a, b, c = rng.randint(3, 60), rng.randint(2, 9), rng.randint(1, 20)
        kind = i % 3
        if kind == 0:
            q = f"{name} has {a} {thing}. She buys {b} packs of {c} {thing} each. How many {thing} now?"
            steps = [
                f"{b} packs of {c} {thing} are {b} * {c} = {b * c} {thing}.",
                f"So {name} has {a} + {b * c} = {a + b * c} {thing}.",
            ]
            ans = a + b * c
        elif kind == 1:
            total = a * b
            q = (
                f"{name} shares {total} {thing} equally among {b} friends and keeps {c} more for later. "
                f"How many {thing} does each friend get, plus the ones kept?"
            )
            steps = [
                f"Each friend gets {total} / {b} = {a} {thing}.",
                f"Adding the {c} kept gives {a} + {c} = {a + c}.",
            ]
            ans = a + c
        else:
            q = (
                f"A box holds {a} {thing}. {name} fills {b} boxes and gives away {c} {thing}. "
                f"Then she splits the rest into 2 equal piles. How many are in each pile?"
            )
            rest = a * b - c
            rest += rest % 2
            steps = [
                f"{b} boxes hold {b} * {a} = {a * b} {thing}.",
                f"After giving away {c}, about {rest} {thing} remain (rounded to an even number).",
                f"Each pile has {rest} / 2 = {rest // 2} {thing}.",
            ]
            ans = rest // 2
        out.append({"id": f"standin-{i:05d}", "question": q, "answer": "\n".join(steps) + f"\n#### {ans}"})
    return out


def gsm8k_samples(path: Path, n: int) -> list[dict]:
    items = read_gsm8k(path)[:n]
    return [
        {"id": f"gsm8k-train-{i:05d}", "question": it.question, "answer": it.answer}
        for i, it in enumerate(items)
    ]


def build(out: Path, samples: int, eval_dir: Path = DEFAULT_EVAL_DIR) -> Path:
    """Write the demo's SFT shard; returns its path."""
    train = Path(eval_dir) / "gsm8k" / "train.jsonl"
    rows, name = (
        (gsm8k_samples(train, samples), "gsm8k_train.jsonl")
        if train.is_file()
        else (standin_samples(samples), "gsm8k_standin.jsonl")
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--eval-dir", type=Path, default=DEFAULT_EVAL_DIR)
    args = p.parse_args(argv)
    print(build(args.out, args.samples, args.eval_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
