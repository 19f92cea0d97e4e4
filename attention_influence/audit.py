"""Lineage audit: which model, heads, probe set, shards and code produced a cut or manifest file.

The cut and the manifest carry their provenance in the Parquet footer (key `attention_influence`, JSON), so
the answer travels with the file: `attention-influence audit work/manifest/manifest.parquet`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from attention_influence.io.atomic import replacing

FOOTER_KEY = "attention_influence"


class AuditError(ValueError):
    """The path has no readable provenance; the message names the file."""


def write_parquet_with_provenance(data, path: Path, provenance: dict) -> None:
    """Write a polars frame, arrow table or arrow record-batch reader atomically, provenance in the footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    footer = {FOOTER_KEY.encode(): json.dumps(provenance, sort_keys=True, default=str).encode()}
    if hasattr(data, "to_arrow"):  # polars
        data = data.to_arrow()
    with replacing(path) as tmp:
        if isinstance(data, pa.Table):
            pq.write_table(
                data.replace_schema_metadata({**(data.schema.metadata or {}), **footer}),
                tmp,
                compression="zstd",
            )
        else:  # a RecordBatchReader: streamed, never whole in memory
            schema = data.schema.with_metadata({**(data.schema.metadata or {}), **footer})
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for batch in data:
                    writer.write_batch(batch)


def read_provenance(path: str | Path) -> dict:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as exc:  # noqa: BLE001 - not Parquet, unreadable: name it
        raise AuditError(f"{path}: not a readable Parquet file: {exc}") from exc
    raw = meta.get(FOOTER_KEY.encode())
    if raw is None:
        raise AuditError(
            f"{path}: no attention-influence provenance in the Parquet footer "
            "(not a cut or manifest written by the asset graph)"
        )
    return json.loads(raw)


def audit_path(path: str | Path) -> dict:
    """Provenance of a file, or of every Parquet file in a folder (which must agree on the head set)."""
    path = Path(path)
    if not path.exists():
        raise AuditError(f"{path}: no such file or folder")
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise AuditError(f"{path}: folder holds no .parquet files")
    records = [(f, read_provenance(f)) for f in files]
    head_sets = {r.get("head_set_id") for _, r in records}
    if len(head_sets) > 1:
        raise AuditError(
            f"{path}: files disagree on the head set: "
            + ", ".join(f"{f.name}={r.get('head_set_id')}" for f, r in records)
        )
    result = dict(records[0][1])
    result["files"] = [str(f) for f, _ in records]
    return result


def format_report(prov: dict) -> str:
    heads = ", ".join(f"({layer}, {h})" for layer, h in prov.get("heads", []))
    shards = prov.get("shards", [])
    lines = [
        f"file(s):           {', '.join(prov.get('files', []))}",
        f"asset:             {prov.get('asset', '?')}",
        f"model:             {prov.get('model', '?')}  (spec {prov.get('model_spec', '?')})",
        f"head set:          {prov.get('head_set_id', '?')}  top {prov.get('head_top_frac', '?')} of heads",
        f"heads (layer, head): {heads or '?'}",
        f"probe set:         version {prov.get('probe_set_version', '?')}, "
        f"digest {prov.get('probe_digest', '?')}, "
        f"{prov.get('n_probes', '?')} probes of <= {prov.get('probe_max_tokens', '?')} tokens",
        f"cut:               top {prov.get('domain_top_frac', '?')} per domain, {prov.get('rounding', '')}",
        f"profile:           {prov.get('profile', '?')}",
        f"shards ({len(shards)}):",
    ]
    for s in shards:
        lines.append(
            f"  {s.get('key')}  {s.get('uri')}  scored={s.get('scored')}  "
            f"fingerprint={s.get('shard_fingerprint')}"
        )
    lines.append("code versions:")
    for asset, version in sorted(prov.get("code_versions", {}).items()):
        lines.append(f"  {asset}: {version}")
    return "\n".join(lines)


def main(args) -> int:
    """`attention-influence audit PATH [--json]`."""
    try:
        prov = audit_path(args.path)
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(prov, indent=1, sort_keys=True))
    else:
        print(format_report(prov))
    return 0
