"""The mixed training corpus: the manifest's rows with their text, as Parquet files a trainer reads as is.

Every eligible document once plus the selected documents again (the manifest, section 5.1 of the paper),
joined in DuckDB with the text of the corpus shards: one relation per shard restricted to (shard, id, text),
and the output streamed from DuckDB's Arrow reader into files of at most `rows_per_file` rows
(`mixed-00000.parquet`, ...), so neither the corpus nor the mix is held in memory. An optional seeded
shuffle orders the rows by a hash of (shard, id, selected_copy, seed) (DuckDB sorts out of core). A manifest
row without exactly one text in its shard stops the mix with the shard and id named.

    from attention_influence.mixed_corpus import write_mixed_corpus
    mix = write_mixed_corpus("work/manifest/manifest.parquet", [("math__m-0", "corpus/math/m-0.parquet")],
                             "work/mixed", rows_per_file=50_000, shuffle_seed=0)
    datasets.load_dataset("parquet", data_files=[str(f) for f in mix.files])

`mix_manifest` is the same for a manifest written by the graph: the shards and the provenance come from the
manifest's own provenance, and the rows are reconciled with it (per domain and copy) before it returns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from attention_influence.audit import write_parquet_with_provenance
from attention_influence.code_versions import code_version
from attention_influence.io.hashing import digest
from attention_influence.io.sql import load_sql

FILE_PATTERN = "mixed-{:05d}.parquet"
COLUMNS = ["id", "domain", "shard", "score", "selected_copy", "head_set_id", "n_tokens", "text"]


class MixError(ValueError):
    """The manifest and the corpus do not reconcile; the message names the shard and ids."""


@dataclass
class MixResult:
    files: list[Path]
    by_domain: object  # polars DataFrame: documents, selected copies, rows, tokens per domain
    rows: int


def text_view(
    con,
    shards: Sequence[tuple[str, str]],
    text_column: str,
    id_column: str | None,
    fmt: str | None = None,
    through_reader: frozenset[str] = frozenset(),
) -> None:
    """View `mix_texts(shard, id, text)` over the corpus shards [(key, uri)], read in any shard format with
    the scorer's ids (`shards.columns`; `id_column` None: generated `<key>:<row>`); the shards of
    `through_reader` are read by the scorer's reader, not by DuckDB in place. Column names are identifiers,
    so they go through DuckDB's expression API, never into SQL text."""
    import duckdb

    from attention_influence.shards.columns import Columns, ShardSource, duckdb_relation
    from attention_influence.shards.rows import InputError

    columns = Columns(text_column, id_column or None, fmt)
    rels = []
    for key, uri in shards:
        try:
            rel, _ = duckdb_relation(
                con, ShardSource(key, uri), columns, read_in_place=key not in through_reader
            )
        except InputError as exc:
            raise MixError(f"shard {key}: {exc}") from exc
        rels.append(
            rel.select(
                duckdb.ConstantExpression(key).alias("shard"),
                duckdb.ColumnExpression("id").cast(duckdb.sqltype("VARCHAR")).alias("id"),
                duckdb.ColumnExpression("text").cast(duckdb.sqltype("VARCHAR")).alias("text"),
            )
        )
    if not rels:
        raise MixError("no corpus shards to take the text from")
    union = rels[0]
    for rel in rels[1:]:
        union = union.union(rel)
    union.create_view("mix_texts", replace=True)


def undecodable(exc: Exception) -> bool:
    """DuckDB's error for Parquet text that is not valid UTF-8."""
    return "Invalid string encoding" in str(exc)


def undecodable_shards(con, shards: Sequence[tuple[str, str]], text_column: str) -> frozenset[str]:
    """Keys of the Parquet shards whose text column DuckDB cannot decode (a row that is not valid UTF-8); the
    other shards, of any format, are left to the usual path (which names what is wrong, if anything)."""
    import duckdb

    bad = set()
    for key, uri in shards:
        try:
            length = duckdb.FunctionExpression("length", duckdb.ColumnExpression(text_column))
            con.read_parquet(str(uri)).select(length.alias("n")).aggregate("max(n)").fetchall()  # decodes
        except duckdb.Error as exc:  # else not Parquet (JSON Lines, Arrow) or no such column: read as before
            if undecodable(exc):
                bad.add(key)
    return frozenset(bad)


def _chunks(reader, rows_per_file: int) -> Iterator[list]:
    """Record batches regrouped into lists of at most `rows_per_file` rows (one list per output file)."""
    part, size = [], 0
    for batch in reader:
        while batch.num_rows:
            take = min(batch.num_rows, rows_per_file - size)
            part.append(batch.slice(0, take))
            size += take
            batch = batch.slice(take)
            if size == rows_per_file:
                yield part
                part, size = [], 0
    if part:
        yield part


def write_mixed_corpus(
    manifest: str | Path,
    shards: Sequence[tuple[str, str]],
    out_dir: str | Path,
    rows_per_file: int = 50_000,
    shuffle_seed: int | None = None,
    provenance: dict | None = None,
    text_column: str = "text",
    id_column: str | None = "id",
    temp_dir: str | Path | None = None,
    fmt: str | None = None,
) -> MixResult:
    """Write `out_dir/mixed-NNNNN.parquet` from the manifest and the corpus shards [(key, uri)] the manifest's
    `shard` column names; earlier `mixed-*.parquet` files beyond the new ones are removed."""
    import duckdb
    import polars as pl
    import pyarrow as pa

    if rows_per_file < 1:
        raise MixError(f"mix.rows_per_file must be at least 1, got {rows_per_file}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"manifest": str(manifest)}
    con = duckdb.connect()
    try:
        if temp_dir:
            con.execute("SET temp_directory = ?", [str(temp_dir)])
        text_view(con, shards, text_column, id_column, fmt)
        try:
            problems = con.execute(load_sql("mixed_corpus_problems"), params).fetchall()
        except duckdb.InvalidInputException as exc:
            if not undecodable(exc):
                raise
            # a shard holds text that is not valid UTF-8 (rows scoring quarantined): DuckDB refuses the whole
            # file, so those shards are read by the reader, which sets the rows aside
            through = undecodable_shards(con, shards, text_column)
            text_view(con, shards, text_column, id_column, fmt, through_reader=through)
            problems = con.execute(load_sql("mixed_corpus_problems"), params).fetchall()
        if problems:
            listed = "; ".join(f"{s}/{i}: {m} rows, {t} texts" for s, i, m, t in problems)
            raise MixError(
                f"{manifest}: manifest rows without exactly one text in their corpus shard: {listed}"
            )
        reader = con.sql(
            load_sql("mixed_corpus_rows"), params={**params, "seed": shuffle_seed}
        ).to_arrow_reader(batch_size=4096)
        files = []
        for n, part in enumerate(_chunks(reader, rows_per_file)):
            path = out_dir / FILE_PATTERN.format(n)
            write_parquet_with_provenance(pa.Table.from_batches(part), path, provenance or {})
            files.append(path)
        for stale in sorted(out_dir.glob("mixed-*.parquet")):
            if stale not in files:
                stale.unlink()
        if not files:
            raise MixError(f"{manifest}: the manifest has no rows")
        # the manifest's per-domain counts, computed over the mixed files
        summary = con.sql(
            load_sql("pretraining_manifest_summary"), params={"manifest": [str(f) for f in files]}
        )
        by_domain = pl.from_arrow(summary.to_arrow_table())
    finally:
        con.close()
    return MixResult(files, by_domain, int(by_domain["rows"].sum()))


def mix_provenance(manifest_provenance: dict, rows_per_file: int, shuffle_seed: int | None) -> dict:
    """The manifest's provenance, as the mix's, with the file size, the seed and this code version."""
    return {
        **manifest_provenance,
        "asset": "mixed_corpus",
        "mix_rows_per_file": int(rows_per_file),
        "mix_shuffle_seed": shuffle_seed,
        "code_versions": {
            **manifest_provenance.get("code_versions", {}),
            "mixed_corpus": code_version("mixed_corpus"),
        },
    }


def manifest_shards(manifest_provenance: dict) -> list[tuple[str, str]]:
    """The corpus shards [(key, uri)] the manifest's rows come from (its provenance's `shards`)."""
    return [(s["key"], s["uri"]) for s in manifest_provenance.get("shards", [])]


def check_reconciles(manifest: str | Path, files: Sequence[Path]) -> None:
    """The mixed files hold the manifest's rows: equal counts per (domain, selected_copy), else `MixError`."""
    import polars as pl

    expected = pl.scan_parquet(manifest).group_by("domain", "selected_copy").len().collect()
    got = pl.scan_parquet(files).group_by("domain", "selected_copy").len().collect()
    if not expected.sort(pl.all()).equals(got.sort(pl.all())):
        raise MixError(f"mixed corpus rows do not reconcile with {manifest}: {got} vs {expected}")


def mix_manifest(
    manifest: str | Path,
    manifest_provenance: dict,
    out_dir: str | Path,
    rows_per_file: int,
    shuffle_seed: int | None,
    text_column: str = "text",
    id_column: str | None = "id",
    temp_dir: str | Path | None = None,
    log=None,
    fmt: str | None = None,
) -> MixResult:
    """The mix of a manifest written by the graph: the text taken from the shards its provenance names, the
    mix's provenance in every file, the rows reconciled with the manifest (`MixError`)."""
    shards = manifest_shards(manifest_provenance)
    if log:
        log(f"joining {manifest} with the text of {len(shards)} corpus shard(s)")
    mix = write_mixed_corpus(
        manifest,
        shards,
        out_dir,
        rows_per_file=int(rows_per_file),
        shuffle_seed=shuffle_seed,
        provenance=mix_provenance(manifest_provenance, rows_per_file, shuffle_seed),
        text_column=text_column,
        id_column=id_column,
        temp_dir=temp_dir,
        fmt=fmt,
    )
    check_reconciles(manifest, mix.files)
    return mix


def mix_data_version(manifest_provenance: dict, rows_per_file: int, shuffle_seed: int | None) -> str:
    """The mix's data version: the manifest's provenance, the file size, the seed and this code version."""
    return digest(
        {
            "manifest": manifest_provenance,
            "rows_per_file": int(rows_per_file),
            "seed": shuffle_seed,
            "code_version": code_version("mixed_corpus"),
        }
    )
