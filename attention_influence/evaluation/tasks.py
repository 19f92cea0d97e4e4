"""The mirror-effect benchmarks (appendix D): readers for the shared files and a scorer for each.

All three are scored by log-likelihood through `continuation_logprobs`, so they run the same way with or
without masked heads:
- Banking77 in-context classification: one prompt with K demonstrations over C intents, then each query; the
  prediction is the intent (among the C) whose name has the highest log-likelihood. Chance is 1/C.
- HellaSwag (0-shot): the ending with the highest log-likelihood per character (lm-eval's acc_norm);
  plain acc too.
- GSM8K: mean per-token NLL of the gold solution given a k-shot prompt (lower is better). Calculator
  annotations `<<...>>` are removed from solutions, as they are not text a model would have seen.
Item samples are drawn with a fixed seed, so every masking condition sees the same items.
"""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attention_influence.evaluation.loglik import continuation_logprobs, continuation_scores
from attention_influence.influence.models import LoadedModel


class EvalDataError(ValueError):
    """An evaluation file is malformed; the message names the file and the line or row."""


# ---------------------------------------------------------------------------------------------- readers


@dataclass(frozen=True)
class LabeledText:
    text: str
    label: str


@dataclass(frozen=True)
class HellaSwagItem:
    context: str
    gold: int
    endings: tuple[str, str, str, str]


@dataclass(frozen=True)
class GSM8KItem:
    question: str
    answer: str


def read_banking77(path: str | Path) -> list[LabeledText]:
    """A CSV with header `text,category`; an empty text or category is an error naming the row."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"text", "category"} <= set(reader.fieldnames):
            raise EvalDataError(
                f"{path}: expected a header with columns text,category, got {reader.fieldnames}"
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            text, label = (row.get("text") or "").strip(), (row.get("category") or "").strip()
            if not text or not label:
                raise EvalDataError(f"{path}: row at line {line} has an empty text or category: {row}")
            rows.append(LabeledText(text, label))
    if not rows:
        raise EvalDataError(f"{path}: no rows")
    return rows


def read_hellaswag(path: str | Path) -> list[HellaSwagItem]:
    """Six lines per item: `activity label: context`, the gold index 0-3, then the four endings."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise EvalDataError(f"{path}: {len(lines)} lines is not a multiple of 6 (context, gold, 4 endings)")
    items = []
    for start in range(0, len(lines), 6):
        ctx, gold, *endings = lines[start : start + 6]
        if not ctx.strip():
            raise EvalDataError(f"{path}: line {start + 1}: empty context")
        if gold.strip() not in {"0", "1", "2", "3"}:
            raise EvalDataError(f"{path}: line {start + 2}: gold index must be 0-3, got {gold!r}")
        for j, e in enumerate(endings):
            if not e.strip():
                raise EvalDataError(f"{path}: line {start + 3 + j}: empty ending")
        items.append(HellaSwagItem(ctx, int(gold), tuple(endings)))
    if not items:
        raise EvalDataError(f"{path}: no items")
    return items


CALCULATOR = re.compile(r"<<[^<>]*>>")


def read_gsm8k(path: str | Path) -> list[GSM8KItem]:
    """JSON lines with `question` and `answer` (the worked solution ending in `#### <number>`)."""
    path = Path(path)
    items = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalDataError(f"{path}: line {line_no}: invalid JSON: {exc}") from exc
            q, a = (
                row.get("question") if isinstance(row, dict) else None,
                row.get("answer") if isinstance(row, dict) else None,
            )
            if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
                raise EvalDataError(
                    f"{path}: line {line_no}: needs non-empty string fields question and answer"
                )
            items.append(GSM8KItem(q.strip(), CALCULATOR.sub("", a).strip()))
    if not items:
        raise EvalDataError(f"{path}: no items")
    return items


def hellaswag_preprocess(text: str) -> str:
    """As lm-evaluation-harness: WikiHow `[title]` markers become sentence breaks, other brackets go."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def sample(items: list, n: int, seed: int, salt: str) -> list:
    """A seeded sample of n items (all of them, in file order, when n >= len)."""
    if n >= len(items):
        return list(items)
    rng = random.Random(f"{seed}:{salt}")
    return [items[i] for i in sorted(rng.sample(range(len(items)), n))]


# ---------------------------------------------------------------------------------------------- tasks


def _ids(lm: LoadedModel, texts: list[str], special: bool = False) -> list[list[int]]:
    return lm.tokenizer(texts, add_special_tokens=special).input_ids


ItemScores = dict[str, tuple[np.ndarray, np.ndarray]]  # metric -> (per-item value, per-item weight)


class Task:
    """A benchmark scored per item: `item_scores` gives each metric's per-item values and weights (the
    sampling-error intervals resample them), `evaluate` their weighted means."""

    name = "task"

    def item_scores(self, lm: LoadedModel, heads=(), batch_tokens: int = 8192) -> ItemScores:
        raise NotImplementedError

    def evaluate(self, lm: LoadedModel, heads=(), batch_tokens: int = 8192) -> dict[str, float]:
        scores = self.item_scores(lm, heads=heads, batch_tokens=batch_tokens)
        return {k: float((v * w).sum() / w.sum()) for k, (v, w) in scores.items()}


def _unweighted(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values, dtype=np.float64)
    return values, np.ones_like(values)


class Banking77ICL(Task):
    """Many-shot intent classification with a restricted candidate set (the C intents shown in the prompt)."""

    name = "banking77"
    HEADER = "Classify each banking customer query into one of these intents: {labels}.\n\n"

    def __init__(
        self,
        train: list[LabeledText],
        test: list[LabeledText],
        n_labels: int,
        shots_per_label: int,
        n_queries: int,
        seed: int,
    ):
        rng = random.Random(f"{seed}:banking77")
        by_label: dict[str, list[LabeledText]] = {}
        for row in train:
            by_label.setdefault(row.label, []).append(row)
        usable = sorted(set(by_label) & {r.label for r in test})
        if len(usable) < 2:
            raise EvalDataError("banking77: fewer than 2 intents occur in both train and test")
        self.labels = rng.sample(usable, min(n_labels, len(usable)))
        shots = [
            s
            for lab in self.labels
            for s in rng.sample(by_label[lab], min(shots_per_label, len(by_label[lab])))
        ]
        rng.shuffle(shots)
        self.shots = shots
        pool = [r for r in test if r.label in set(self.labels)]
        self.queries = [pool[i] for i in sorted(rng.sample(range(len(pool)), min(n_queries, len(pool))))]

    @staticmethod
    def display(label: str) -> str:
        return label.replace("_", " ")

    def prompt(self, shots: list[LabeledText]) -> str:
        names = ", ".join(self.display(lab) for lab in self.labels)
        demos = "".join(f"Query: {s.text}\nIntent: {self.display(s.label)}\n\n" for s in shots)
        return self.HEADER.format(labels=names) + demos

    def fit_shots(self, lm: LoadedModel) -> None:
        """Drop demonstrations from the end until prompt + longest query + label fits the context window."""
        room = (
            lm.max_context
            - 64
            - max(len(i) for i in _ids(lm, [f"Query: {q.text}\nIntent:" for q in self.queries]))
        )
        while self.shots and len(_ids(lm, [self.prompt(self.shots)], special=True)[0]) > room:
            self.shots = self.shots[:-1]

    def params(self) -> dict:
        return {"labels": len(self.labels), "shots": len(self.shots), "queries": len(self.queries)}

    def item_scores(self, lm: LoadedModel, heads=(), batch_tokens: int = 8192) -> ItemScores:
        if not hasattr(self, "_cache") or self._cache[0] is not lm:
            self.fit_shots(lm)
            prefix = _ids(lm, [self.prompt(self.shots)], special=True)[0]
            ctx = _ids(lm, [f"Query: {q.text}\nIntent:" for q in self.queries])
            cands = _ids(lm, [f" {self.display(lab)}\n" for lab in self.labels])
            self._cache = (lm, prefix, ctx, cands)
        _, prefix, ctx, cands = self._cache
        requests = [(c, cand) for c in ctx for cand in cands]
        logp = continuation_logprobs(lm, requests, prefix=prefix, heads=heads, batch_tokens=batch_tokens)
        pred = logp.reshape(len(ctx), len(cands)).argmax(1)
        gold = np.array([self.labels.index(q.label) for q in self.queries])
        return {"banking77_acc": _unweighted(pred == gold)}


class HellaSwag(Task):
    name = "hellaswag"

    def __init__(self, items: list[HellaSwagItem], n_items: int, seed: int):
        self.items = sample(items, n_items, seed, "hellaswag")

    def params(self) -> dict:
        return {"items": len(self.items)}

    def item_scores(self, lm: LoadedModel, heads=(), batch_tokens: int = 8192) -> ItemScores:
        ctx = _ids(lm, [hellaswag_preprocess(it.context) for it in self.items], special=True)
        endings = [" " + hellaswag_preprocess(e) for it in self.items for e in it.endings]
        conts = _ids(lm, endings)
        requests = [(ctx[i // 4], conts[i]) for i in range(len(conts))]
        logp = continuation_logprobs(lm, requests, heads=heads, batch_tokens=batch_tokens).reshape(-1, 4)
        chars = np.array([len(e) for e in endings], dtype=np.float64).reshape(-1, 4)
        gold = np.array([it.gold for it in self.items])
        return {
            "hellaswag_acc_norm": _unweighted((logp / chars).argmax(1) == gold),
            "hellaswag_acc": _unweighted(logp.argmax(1) == gold),
        }


class GSM8KLogLik(Task):
    name = "gsm8k"

    def __init__(self, train: list[GSM8KItem], test: list[GSM8KItem], n_shots: int, n_items: int, seed: int):
        self.shots = sample(train, n_shots, seed, "gsm8k-shots")
        self.items = sample(test, n_items, seed, "gsm8k")

    def params(self) -> dict:
        return {"shots": len(self.shots), "items": len(self.items)}

    def item_scores(self, lm: LoadedModel, heads=(), batch_tokens: int = 8192) -> ItemScores:
        prefix = _ids(
            lm, ["".join(f"Question: {s.question}\nAnswer: {s.answer}\n\n" for s in self.shots)], special=True
        )[0]
        ctx = _ids(lm, [f"Question: {it.question}\nAnswer:" for it in self.items], special=not prefix)
        conts = _ids(lm, [" " + it.answer for it in self.items])
        logp = continuation_logprobs(
            lm, list(zip(ctx, conts, strict=True)), prefix=prefix, heads=heads, batch_tokens=batch_tokens
        )
        n_tok = np.array([len(c) for c in conts], dtype=np.float64)
        # per item: its NLL per token, weighted by its tokens (the weighted mean is NLL / all gold tokens)
        return {"gsm8k_gold_nll": (-np.asarray(logp, dtype=np.float64) / n_tok, n_tok)}


class ProbeExactMatch(Task):
    """Held-out synthetic retrieval probes (appendix A), scored in one teacher-forced pass per probe.

    The answer is an exact match when every answer token is the argmax given the prompt and the answer tokens
    before it, which is exactly when greedy decoding reproduces the answer's tokens; it costs one forward
    instead of one per answer token. probe_token_acc (share of answer tokens that are the argmax) still moves
    when exact match sits at the floor.
    """

    name = "probes"

    def __init__(self, probes: list):
        self.probes = list(probes)

    def params(self) -> dict:
        return {"probes": len(self.probes), "max_tokens": max((p.n_tokens for p in self.probes), default=0)}

    def item_scores(self, lm: LoadedModel, heads=(), batch_tokens: int = 8192) -> ItemScores:
        requests = [(p.prompt_ids, p.answer_ids) for p in self.probes]
        s = continuation_scores(lm, requests, heads=heads, batch_tokens=batch_tokens)
        return {
            "probe_em": _unweighted(s.greedy),
            "probe_token_acc": _unweighted(s.n_argmax / s.n_tokens),
        }


def load_tasks(eval_dir: Path, cfg) -> tuple[list, dict[str, str]]:
    """The benchmark tasks whose files exist under eval_dir, and a reason for each one skipped."""
    tasks, skipped = [], {}
    eval_dir = Path(eval_dir)
    where = f"(set AI_EVAL_DIR or EvalConfig.eval_dir; looked in {eval_dir})"
    specs = {
        "banking77": (
            ["banking77/train.csv", "banking77/test.csv"],
            lambda p: Banking77ICL(
                read_banking77(p[0]),
                read_banking77(p[1]),
                cfg.banking77_labels,
                cfg.banking77_shots_per_label,
                cfg.banking77_queries,
                cfg.seed,
            ),
        ),
        "hellaswag": (
            ["hellaswag/hellaswag_val.txt"],
            lambda p: HellaSwag(read_hellaswag(p[0]), cfg.hellaswag_items, cfg.seed),
        ),
        "gsm8k": (
            ["gsm8k/train.jsonl", "gsm8k/test.jsonl"],
            lambda p: GSM8KLogLik(
                read_gsm8k(p[0]), read_gsm8k(p[1]), cfg.gsm8k_shots, cfg.gsm8k_items, cfg.seed
            ),
        ),
    }
    sizes = {"banking77": cfg.banking77_queries, "hellaswag": cfg.hellaswag_items, "gsm8k": cfg.gsm8k_items}
    for name, (files, build) in specs.items():
        paths = [eval_dir / f for f in files]
        missing = [str(p) for p in paths if not p.is_file()]
        if sizes[name] <= 0:
            skipped[name] = "disabled by configuration (0 items)"
        elif not eval_dir.is_dir():
            skipped[name] = f"evaluation directory missing {where}"
        elif missing:
            skipped[name] = f"missing file(s): {', '.join(missing)}"
        else:
            tasks.append(build(paths))
    return tasks, skipped
