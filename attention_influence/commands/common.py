"""What the command groups share: the progress bar, the model flags and the model they name, column flags."""

from __future__ import annotations

import argparse
import glob
import sys

from tqdm import tqdm

from attention_influence.config import Config


def progress_bar(desc: str, unit: str):
    bar = tqdm(desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def batch_tokens_arg(value: str) -> int | str:
    """--batch-tokens: a positive number, or auto (sized from free GPU memory, 8192 on a CPU)."""
    from attention_influence.shards.spec import batch_size

    try:
        size = batch_size(value.strip().lower())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return "auto" if size is None else size


def unset_column(value: str | None) -> str | None:
    """A column flag as the configuration spells it: `null` (or an empty string) is no column."""
    return None if value is None or value.strip().lower() in ("", "null") else value


def expand_corpus(pattern: str) -> list[str]:
    if "://" in pattern:
        return [pattern]
    files = sorted(glob.glob(pattern, recursive=True))
    if not files:
        raise SystemExit(f"error: no corpus files match {pattern!r}")
    return files


def read_texts(files: list[str], text_column: str = "text", limit_rows: int = 200_000) -> list[str]:
    """Texts of the files (any shard format), file by file until there are `limit_rows`."""
    from attention_influence.shards.reader import iter_shard

    texts: list[str] = []
    for f in files:
        try:
            for batch in iter_shard(f, text_column, None, None):  # whole files, as always
                texts.extend(t for t in batch.get_column("text").to_list() if isinstance(t, str))
        except Exception as exc:  # noqa: BLE001 - name the file whatever went wrong
            raise SystemExit(f"error: {f}: cannot read column {text_column!r}: {exc}") from exc
        if len(texts) >= limit_rows:
            break
    return texts


def load_from_args(args):
    """The model the --model, --dtype, --device and --trust-remote-code arguments name."""
    from attention_influence.influence.models import load_model

    return load_model(
        args.model,
        dtype=args.dtype,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        cache_dir=args.loaded.config.model_cache,
    )


def add_model_args(p: argparse.ArgumentParser, c: Config) -> None:
    m = c.model
    p.add_argument("--model", default=m.spec, help="hub id, local folder, .gguf file, hf:// or s3:// path")
    p.add_argument("--dtype", default=m.dtype, choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", default=m.device, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--trust-remote-code",
        action=argparse.BooleanOptionalAction,
        default=m.trust_remote_code,
        help="allow model code from the model folder",
    )
