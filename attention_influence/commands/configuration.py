"""`attention-influence config`: the effective configuration, one key, or the reference
(docs/configuration.md)."""

from __future__ import annotations

import sys
from pathlib import Path

from attention_influence.config import Config, Loaded


def add(sub, c: Config) -> None:
    p = sub.add_parser("config", help="the effective configuration and where each value came from")
    p.add_argument("action", choices=["show", "get", "docs"], help="show all | get KEY | docs (markdown)")
    p.add_argument("key", nargs="?", default=None, help="get: a dotted key, e.g. cut.top_frac")
    p.add_argument("--out", default=None, help="docs: write here instead of stdout")
    p.set_defaults(func=cmd_config)


def cmd_config(args) -> int:
    from attention_influence import config as cfg

    loaded: Loaded = args.loaded
    if args.action == "show":
        print(cfg.show(loaded), end="")
    elif args.action == "get":
        if not args.key or cfg.field_info(args.key) is None:
            print(f"error: unknown key {args.key!r}", file=sys.stderr)
            return 2
        section, _, name = args.key.partition(".")
        value = getattr(getattr(loaded.config, section), name) if name else getattr(loaded.config, section)
        print(value if isinstance(value, str) else cfg._toml(value))
    else:  # docs
        text = cfg.reference_markdown()
        if args.out:
            Path(args.out).write_text(text)
        else:
            print(text, end="")
    return 0
