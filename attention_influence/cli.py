"""`attention-influence`: the engine from the command line (config, heads, score, cut, audit, bench,
proxy-train, score-steps, sft-study, prepare-model).

Flag defaults come from the effective configuration (`--config FILE`, else AI_CONFIG, else the `demo`
profile; `--set key=value` overrides a key), so a flag given on the command line is the top layer."""

from __future__ import annotations

import argparse
import sys

from attention_influence.commands import bench, configuration, model, post_training, selection, training
from attention_influence.config import ConfigError, Loaded, load_config, parse_value
from attention_influence.process_exit import skip_exit_collections

GROUPS = (configuration, selection, bench, training, post_training, model)  # in `--help` order


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, help="configuration file, TOML or YAML (default: AI_CONFIG)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration key, e.g. --set cut.top_frac=0.1 (repeatable)",
    )


def load_from_flags(argv: list[str] | None) -> tuple[Loaded, list[str]]:
    """The configuration named by --config / --set (before or after the command), and the other arguments."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_config_args(pre)
    known, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    overrides = {}
    for item in known.set:
        key, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. cut.top_frac=0.1")
        overrides[key.strip()] = parse_value(key.strip(), raw)
    return load_config(known.config, overrides=overrides, overrides_source="--set"), rest


def build_parser(loaded: Loaded | None = None) -> argparse.ArgumentParser:
    loaded = loaded or load_config(env={})
    parser = argparse.ArgumentParser(prog="attention-influence", description=__doc__)
    add_config_args(parser)
    parser.set_defaults(loaded=loaded)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add(sub, loaded.config)
    return parser


def main(argv: list[str] | None = None) -> int:
    skip_exit_collections()
    try:
        loaded, rest = load_from_flags(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = build_parser(loaded).parse_args(
        rest
    )  # --help and usage errors exit here, before torch is imported
    if args.command == "config":
        return args.func(args)
    from attention_influence.influence.models import ModelLoadError
    from attention_influence.shards.job import InputError, OutputBusyError

    try:
        return args.func(args)
    except (InputError, OutputBusyError, ModelLoadError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
