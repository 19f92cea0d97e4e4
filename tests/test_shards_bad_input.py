"""Bad input: every broken shard gives an error naming the file, or its rows are quarantined with a reason.

Through `shards.score_shard` (what the CLI and the `document_scores` asset call), the CLI as a subprocess,
and the Dagster graph. Counts always reconcile: documents in = scored + quarantined.
"""

from __future__ import annotations

import random

import dagster as dg
import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shard_helpers import run_cli, score_cmd, text, write_docs, write_heads

from attention_influence.shards import (
    HeadSet,
    InputError,
    ShardJob,
    cross_shard_duplicates,
    quarantine_path,
    read_shard,
    score_shard,
)

HEADS = [(1, 0), (2, 1), (3, 3)]
EVIL = "x'); drop table t; --"


@pytest.fixture(scope="module")
def lm():
    from conftest import tiny_loaded_model

    return tiny_loaded_model("tiny-bad-input")


def score(lm, shard, out, **kw) -> dict:
    kw = {"max_tokens": 64, "checkpoint_every": 4, **kw}
    return score_shard(lm, HeadSet(HEADS, "hs-test"), ShardJob(str(shard), out, **kw))


def reconcile(summary: dict, out) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Both tables, after checking every input row is in exactly one of them."""
    scores, quarantine = pl.read_parquet(out), pl.read_parquet(quarantine_path(out))
    assert summary["documents_in"] == summary["scored"] + summary["quarantined"]
    assert (scores.height, quarantine.height) == (summary["scored"], summary["quarantined"])
    assert scores["id"].n_unique() == scores.height  # never the same document twice
    return scores, quarantine


def reasons(quarantine: pl.DataFrame) -> dict[int, str]:
    return dict(quarantine.select("row", "reason").iter_rows())


# --------------------------------------------------------------------------------------------- columns


def test_missing_or_misnamed_text_column_names_file_and_columns(tmp_path, lm):
    shard = tmp_path / "web" / "s.parquet"
    shard.parent.mkdir()
    pl.DataFrame({"id": ["a", "b"], "content": [text(random.Random(0), 12)] * 2}).write_parquet(shard)
    out = tmp_path / "out" / "s.parquet"
    with pytest.raises(InputError) as err:
        score(lm, shard, out)
    message = str(err.value)
    assert str(shard) in message and "missing column(s) ['text']" in message and "'content'" in message
    assert not out.exists() and not quarantine_path(out).exists()
    summary = score(lm, shard, out, text_column="content")  # named correctly, it scores
    scores, _ = reconcile(summary, out)
    assert scores["id"].to_list() == ["a", "b"]


def test_missing_id_column_and_non_text_column(tmp_path, lm):
    no_id = tmp_path / "no_id.parquet"
    pl.DataFrame({"text": ["some text here"]}).write_parquet(no_id)
    with pytest.raises(InputError, match=r"no_id\.parquet: missing column\(s\) \['id'\]"):
        score(lm, no_id, tmp_path / "o1.parquet")
    numeric = tmp_path / "numeric.parquet"
    pl.DataFrame({"id": ["a"], "text": [3]}).write_parquet(numeric)
    with pytest.raises(
        InputError, match=r"numeric\.parquet: text column 'text' has type Int64, expected a string"
    ):
        score(lm, numeric, tmp_path / "o2.parquet")


# --------------------------------------------------------------------------------------------- rows


def test_null_and_empty_text_are_quarantined_with_their_rows(tmp_path, lm):
    rng = random.Random(1)
    shard = tmp_path / "web" / "s.parquet"
    shard.parent.mkdir()
    pl.DataFrame(
        {
            "id": ["a", "b", "c", "d", None, "f"],
            "text": [text(rng, 20), None, "", " \n\t ", text(rng, 20), text(rng, 20)],
            "domain": ["web"] * 6,
        }
    ).write_parquet(shard)
    summary = score(lm, shard, tmp_path / "out.parquet")
    scores, quarantine = reconcile(summary, tmp_path / "out.parquet")
    assert scores["id"].to_list() == ["a", "f"]
    assert reasons(quarantine) == {1: "null text", 2: "empty text", 3: "empty text", 4: "missing id"}
    assert set(quarantine["shard"]) == {"s"}
    assert summary["quarantine_reasons"] == {"empty text": 2, "missing id": 1, "null text": 1}


def test_invalid_utf8_in_a_binary_column(tmp_path, lm):
    shard = tmp_path / "web" / "s.parquet"
    shard.parent.mkdir()
    good = text(random.Random(2), 15).encode()
    table = pa.table(
        {
            "id": ["a", "b", "c", "d"],
            "text": pa.array([good, b"caf\xe9 latin-1 bytes", b"\xff\xfe\x00", None], pa.binary()),
        }
    )
    pq.write_table(table, shard)
    summary = score(lm, shard, tmp_path / "out.parquet")
    scores, quarantine = reconcile(summary, tmp_path / "out.parquet")
    assert scores["id"].to_list() == ["a"] and scores["domain"].to_list() == ["web"]  # domain: folder name
    assert reasons(quarantine) == {1: "text is not valid UTF-8", 2: "text is not valid UTF-8", 3: "null text"}
    assert quarantine["detail"].to_list()[:2] == [
        "text: invalid UTF-8 at byte 3",
        "text: invalid UTF-8 at byte 0",
    ]


def test_invalid_utf8_in_a_string_column(tmp_path, lm):
    """A writer that skipped validation: polars refuses the file, the rows are read as bytes instead."""
    shard = tmp_path / "web" / "s.parquet"
    shard.parent.mkdir()
    raw = pa.array(
        [text(random.Random(3), 15).encode(), b"bad \xc3\x28 sequence", b"fine text again here"], pa.binary()
    )
    as_string = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # no validation on purpose
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": as_string}), shard)
    with pytest.raises(Exception, match="(?i)utf-8"):
        pl.read_parquet(shard)  # what a naive reader meets
    summary = score(lm, shard, tmp_path / "out.parquet")
    scores, quarantine = reconcile(summary, tmp_path / "out.parquet")
    assert scores["id"].to_list() == ["a", "c"]
    assert reasons(quarantine) == {1: "text is not valid UTF-8"}
    assert quarantine["detail"].to_list() == ["text: invalid UTF-8 at byte 4"]


# --------------------------------------------------------------------------------------------- long documents


def test_ten_megabyte_document_is_scored_truncated_never_tokenised_whole(tmp_path, lm, monkeypatch):
    """Tokenising the whole 10 MB takes ~25 s (and ~1.5 GB) with this tokenizer: the scorer never asks for
    more than the clipped prefix (a few hundred characters: the text's own characters predict where its
    tokens end), and scores exactly what a 50,000-character prefix scores."""
    from attention_influence.influence import prepare

    rng = random.Random(4)
    vocabulary = ["fox", "dog", "head", "circle", "key", "value", "the", "copies"]
    huge = " ".join(rng.choice(vocabulary) for _ in range(2_500_000))[:10_000_000]
    assert len(huge) == 10_000_000
    shard = tmp_path / "web" / "s.parquet"
    shard.parent.mkdir()
    small = text(rng, 30)
    pl.DataFrame({"id": ["huge", "small"], "text": [huge, small]}).write_parquet(shard)
    lengths: list[int] = []
    encode = prepare.encode

    def spy(tokenizer, texts):  # what the Rust tokenizer is asked to tokenize
        lengths.extend(map(len, texts))
        return encode(tokenizer, texts)

    monkeypatch.setattr(prepare, "encode", spy)
    summary = score(lm, shard, tmp_path / "out.parquet", max_tokens=64)
    monkeypatch.undo()
    assert lengths and max(lengths) <= (64 + prepare.CLIP_MARGIN_TOKENS) * prepare.MAX_CHARS_PER_TOKEN
    scores, _ = reconcile(summary, tmp_path / "out.parquet")
    from attention_influence.influence.scoring import score_documents

    expected = score_documents(
        lm,
        pl.DataFrame({"id": ["huge", "small"], "domain": ["web", "web"], "text": [huge[:50_000], small]}),
        HEADS,
        "hs-test",
        max_tokens=64,
    )
    assert scores["n_tokens"].to_list() == expected["n_tokens"].to_list()
    assert scores["n_tokens"][0] == 64
    assert scores["score"].to_list() == expected["score"].to_list()


def test_clipping_keeps_the_first_tokens_exactly(tiny_tokenizer):
    """Whatever the starting bound, the clipped text tokenises to the same first max_tokens tokens, and a
    text the bound leaves too short is cut again, wider."""
    from attention_influence.influence.prepare import Preparer

    rng = random.Random(5)
    texts = [text(rng, rng.randint(50, 400)) for _ in range(30)] + ["x" * 5000, "ab " * 3000, "\n" * 4000]
    from attention_influence.influence.prepare import FIRST_RATES, TokenRate

    for max_tokens, scale in [(16, 4.0), (32, 2.0), (64, 1.0), (100, 1 / 16)]:  # tokens per character x scale
        preparer = Preparer(tiny_tokenizer, max_tokens, rate=TokenRate(FIRST_RATES * scale))
        for full, ids_cut in zip(texts, preparer.tokenize(texts), strict=True):
            ids_full = tiny_tokenizer(full).input_ids
            assert ids_cut[:max_tokens].tolist() == ids_full[:max_tokens]
            assert min(len(ids_cut), max_tokens) == min(len(ids_full), max_tokens)  # n_tokens unchanged
        if scale == 4.0:
            assert preparer.stats["retried"] > 0  # four times the tokens per character: cut too short


# --------------------------------------------------------------------------------------------- duplicates


def test_duplicate_ids_within_a_shard_keep_the_first_valid_copy(tmp_path, lm):
    rng = random.Random(6)
    shard = tmp_path / "web" / "s.parquet"
    shard.parent.mkdir()
    pl.DataFrame(
        {
            "id": ["a", "c", "a", "c", "c", "a"],  # row 1: an empty first "c"
            "text": [text(rng, 10), "", text(rng, 10), text(rng, 10), text(rng, 10), text(rng, 10)],
        }
    ).write_parquet(shard)
    summary = score(lm, shard, tmp_path / "out.parquet")
    scores, quarantine = reconcile(summary, tmp_path / "out.parquet")
    assert scores["id"].to_list() == ["a", "c"]
    assert reasons(quarantine) == {
        1: "empty text",
        2: "duplicate id within shard",
        4: "duplicate id within shard",
        5: "duplicate id within shard",
    }
    # the empty first "c" is not scored, so the valid row 3 is the one kept
    assert quarantine.filter(pl.col("row") == 4)["detail"].item() == "same id as row 3"
    assert quarantine.filter(pl.col("row") == 5)["detail"].item() == "same id as row 0"


def test_duplicate_ids_across_shards_agree_with_the_cut(tmp_path, lm):
    """`cross_shard_duplicates` reports the copies that `sql/domain_cut.sql` excludes
    (first shard by name)."""
    a = write_docs(tmp_path / "web" / "a.parquet", 6, seed=1, prefix="x")
    b = write_docs(tmp_path / "web" / "b.parquet", 6, seed=2, prefix="y")
    c = tmp_path / "web" / "c.parquet"
    pl.concat([pl.read_parquet(a).slice(1, 2), pl.read_parquet(b).slice(4, 2)]).write_parquet(c)
    files = []
    for shard in (c, b, a):  # scored in any order: the rule depends on shard names only
        out = tmp_path / "scores" / shard.name
        score(lm, shard, out)
        files.append(str(out))
    dups = cross_shard_duplicates(files)
    assert dups.select("id", "shard", "kept_shard").rows() == [
        ("x0001", "c", "a"),
        ("x0002", "c", "a"),
        ("y0004", "c", "b"),
        ("y0005", "c", "b"),
    ]
    from attention_influence.cut import create_cut_table

    con = duckdb.connect()
    create_cut_table(con, files, 0.2)
    excluded = con.execute(
        "SELECT id, shard, excluded_reason FROM domain_cut WHERE excluded_reason IS NOT NULL "
        "ORDER BY shard, id"
    ).fetchall()
    assert [(i, s) for i, s, _ in excluded] == dups.select("id", "shard").rows()
    assert all(r.startswith("duplicate id, kept in shard") for _, _, r in excluded)
    assert cross_shard_duplicates(files[1:]).height == 0


# --------------------------------------------------------------------------------------------- domains


def test_unsafe_and_unknown_domains_are_quarantined(tmp_path, lm):
    rng = random.Random(7)
    domains = ["web", EVIL, "../etc", "", None, "a b", "code", "x" * 65, "math"]
    shard = tmp_path / "s.parquet"
    pl.DataFrame(
        {
            "id": [f"d{i}" for i in range(len(domains))],
            "text": [text(rng, 12) for _ in domains],
            "domain": domains,
        }
    ).write_parquet(shard)
    summary = score(lm, shard, tmp_path / "out.parquet")
    scores, quarantine = reconcile(summary, tmp_path / "out.parquet")
    assert scores["domain"].to_list() == ["web", "code", "math"]
    assert reasons(quarantine) == {
        1: "unsafe domain name",
        2: "unsafe domain name",
        3: "missing domain",
        4: "missing domain",
        5: "unsafe domain name",
        7: "unsafe domain name",
    }
    assert quarantine.filter(pl.col("row") == 1)["domain"].item() == EVIL  # recorded verbatim, as data
    summary = score(lm, shard, tmp_path / "out2.parquet", allowed_domains=["web", "code"])
    scores, quarantine = reconcile(summary, tmp_path / "out2.parquet")
    assert scores["domain"].to_list() == ["web", "code"]
    assert reasons(quarantine)[8] == "unknown domain"
    assert quarantine.filter(pl.col("row") == 8)["detail"].item() == "not one of: code, web"


# --------------------------------------------------------------------------------------------- files


def test_corrupt_parquet_names_the_file(tmp_path, lm):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not a parquet file at all")
    truncated = tmp_path / "truncated.parquet"
    write_docs(tmp_path / "whole.parquet", 20)
    data = (tmp_path / "whole.parquet").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for bad in (garbage, truncated):
        out = tmp_path / "out" / f"{bad.stem}.parquet"
        with pytest.raises(InputError) as err:
            score(lm, bad, out)
        assert str(err.value).startswith(f"{bad}: Parquet shard is corrupt or truncated (")
        assert not out.exists()


def test_deleted_shard_names_the_file(tmp_path, lm):
    shard = write_docs(tmp_path / "web" / "gone.parquet", 3)
    shard.unlink()
    with pytest.raises(InputError) as err:
        score(lm, shard, tmp_path / "out.parquet")
    assert (
        str(err.value)
        == f"{shard}: Parquet shard does not exist (deleted or renamed after it was registered?)"
    )


def test_empty_shard_and_first_rows_only(tmp_path, lm):
    empty = tmp_path / "web" / "empty.parquet"
    empty.parent.mkdir()
    pl.DataFrame(schema={"id": pl.String, "text": pl.String}).write_parquet(empty)
    summary = score(lm, empty, tmp_path / "empty_out.parquet")
    scores, quarantine = reconcile(summary, tmp_path / "empty_out.parquet")
    assert scores.height == quarantine.height == 0 and "score" in scores.columns
    shard = write_docs(tmp_path / "web" / "twelve.parquet", 12)
    summary = score(lm, shard, tmp_path / "five.parquet", max_docs=5)
    reconcile(summary, tmp_path / "five.parquet")
    assert (summary["documents_in_shard"], summary["documents_in"], summary["documents_not_considered"]) == (
        12,
        5,
        7,
    )


def test_output_cannot_overwrite_the_input(tmp_path, lm):
    shard = write_docs(tmp_path / "s.parquet", 3)
    with pytest.raises(InputError, match="would overwrite the input shard"):
        score(lm, shard, shard)
    assert pl.read_parquet(shard).height == 3


def test_read_shard_numbers_rows_from_zero(tmp_path):
    shard = write_docs(tmp_path / "web" / "s.parquet", 4, domain=None)
    rows = read_shard(str(shard), "text", "id", "domain")
    assert rows.columns == ["row", "id", "text", "domain", "utf8_error"]
    assert rows["row"].to_list() == [0, 1, 2, 3] and set(rows["domain"]) == {"web"}


# --------------------------------------------------------------------------------------------- CLI


def test_cli_bad_inputs(tmp_path, tiny_model_dir):
    heads = write_heads(tmp_path / "heads.json")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"not parquet")
    proc = run_cli(score_cmd(tiny_model_dir, heads, corrupt, tmp_path / "o.parquet"))
    assert proc.returncode != 0 and f"{corrupt}: Parquet shard is corrupt or truncated" in proc.stderr

    rng = random.Random(8)
    shard = tmp_path / "web" / "mixed.parquet"
    shard.parent.mkdir()
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b", "c", "a", "e", "f"],
                "body": pa.array(
                    [
                        text(rng, 20).encode(),
                        None,
                        b"\xff",
                        text(rng, 9).encode(),
                        text(rng, 9).encode(),
                        text(rng, 9).encode(),
                    ],
                    pa.binary(),
                ),
                "domain": ["web", "web", "web", "web", EVIL, "web"],
            }
        ),
        shard,
    )
    out = tmp_path / "scores" / "mixed.parquet"
    proc = run_cli(score_cmd(tiny_model_dir, heads, shard, out, "--max-tokens", "64"))
    assert proc.returncode != 0 and "missing column(s) ['text']" in proc.stderr and "'body'" in proc.stderr
    proc = run_cli(
        score_cmd(tiny_model_dir, heads, shard, out, "--max-tokens", "64", "--text-column", "body")
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    quarantine = pl.read_parquet(tmp_path / "scores" / "mixed.quarantine.parquet")  # next to the output
    assert reasons(quarantine) == {
        1: "null text",
        2: "text is not valid UTF-8",
        3: "duplicate id within shard",
        4: "unsafe domain name",
    }
    assert pl.read_parquet(out)["id"].to_list() == ["a", "f"]


# --------------------------------------------------------------------------------------------- Dagster graph


def error_text(error) -> str:
    """A Dagster step error with its causes, as the UI shows them."""
    parts = []
    while error is not None:
        parts.append(error.message)
        error = error.cause or error.context
    return "\n".join(parts)


def test_graph_quarantines_rows_and_names_broken_shards(tmp_path, tiny_model_dir):
    """The `document_scores` partitions of bad shards: row problems quarantined and counted in metadata,
    unreadable shards fail naming the file; the cut then runs on what was scored, and the unsafe domain
    never reaches DuckDB."""
    from graph_helpers import graph_resources, write_shard

    from ai_assets.definitions import ASSETS
    from ai_assets.partitions import register_shards

    corpus = tmp_path / "corpus"
    for s in range(2):
        write_shard(corpus / "alpha" / f"good-{s}.parquet", "alpha", n_docs=10, seed=s, prefix=f"g{s}")
    resources = graph_resources(tiny_model_dir, corpus, tmp_path / "work")
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:

        def materialize(selection, key=None):
            return dg.materialize(
                ASSETS,
                selection=selection,
                partition_key=key,
                instance=instance,
                resources=resources,
                raise_on_error=False,
            )

        assert materialize(["selector_model"]).success
        register_shards(instance, resources["corpus"].shards())
        assert materialize(["retrieval_probe_set", "retrieval_heads"]).success
        rng = random.Random(9)  # now the bad shards arrive
        pq.write_table(
            pa.table(
                {
                    "id": ["r0", "r1", "r2", "r3", "r0", "r5", "r6"],
                    "text": pa.array(
                        [
                            text(rng, 20).encode(),
                            None,
                            b"  ",
                            b"\xc3\x28",
                            text(rng, 20).encode(),
                            text(rng, 20).encode(),
                            text(rng, 20).encode(),
                        ],
                        pa.binary(),
                    ),
                    "domain": ["alpha", "alpha", "alpha", "alpha", "alpha", EVIL, "alpha"],
                }
            ),
            corpus / "alpha" / "rows.parquet",
        )
        (corpus / "alpha" / "corrupt.parquet").write_bytes(b"PAR1 not really")
        pl.DataFrame({"id": ["m0"], "content": ["text in the wrong column"]}).write_parquet(
            corpus / "alpha" / "misnamed.parquet"
        )
        write_shard(corpus / "alpha" / "gone.parquet", "alpha", n_docs=3, seed=7, prefix="gone")
        register_shards(instance, resources["corpus"].shards())
        (corpus / "alpha" / "gone.parquet").unlink()

        result = materialize(["document_scores"], "alpha__rows")
        assert result.success
        meta = instance.get_latest_materialization_event(
            dg.AssetKey("document_scores")
        ).asset_materialization.metadata
        assert (meta["documents_considered"].value, meta["scored"].value, meta["quarantined"].value) == (
            7,
            2,
            5,
        )
        for reason in (
            "null text",
            "empty text",
            "text is not valid UTF-8",
            "duplicate id within shard",
            "unsafe domain name",
        ):
            assert reason in meta["quarantine_reasons"].value
        failures = {
            "alpha__corrupt": f"{corpus / 'alpha' / 'corrupt.parquet'}: ",
            "alpha__misnamed": "missing column(s) ['text']",
            "alpha__gone": "'alpha__gone' was registered as a partition but is no longer in the corpus",
        }
        for key, expected in failures.items():
            result = materialize(["document_scores"], key)
            assert not result.success, key
            assert expected in error_text(result.get_step_failure_events()[0].event_specific_data.error), key
        for key in ("alpha__good-0", "alpha__good-1"):
            assert materialize(["document_scores"], key).success
        assert materialize(["domain_cut"]).success
        cut = pl.read_parquet(tmp_path / "work" / "cut" / "cut.parquet")
        assert set(cut["shard"]) == {"alpha__good-0", "alpha__good-1", "alpha__rows"}
        assert sorted(cut.filter(pl.col("shard") == "alpha__rows")["id"]) == ["r0", "r6"]
        con = duckdb.connect(str(tmp_path / "work" / "selection.duckdb"), read_only=True)
        assert con.execute("SELECT count(*) FROM domain_cut").fetchone()[0] == cut.height
        assert con.execute("SELECT count(*) FROM domain_cut WHERE domain = ?", [EVIL]).fetchone()[0] == 0
        con.close()
