"""Safe defaults: names cannot escape the work dir, model code is never run unless asked, SQL only binds
values, and unreachable model or corpus URIs give one clear line naming them."""

from __future__ import annotations

import ast
import inspect
import json
import os
from pathlib import Path

import duckdb
import polars as pl
import pytest

from attention_influence.cut import create_cut_table
from attention_influence.io.paths import (
    UnsafePathError,
    confine,
    describe_unreadable,
    relative_parts,
    safe_key,
)
from attention_influence.shards import InputError, read_shard

REPO = Path(__file__).resolve().parents[1]
EVIL = "x'); drop table t; --"
ESCAPES = [
    "../x",
    "a/../../x",
    "/etc/passwd",
    "..",
    "a/..",
    "..\\x",
    "C:\\x",
    "C:x",
    "\\\\server\\share",
    "a\x00b",
    "",
]


# ------------------------------------------------------------------------------------------------ paths


@pytest.mark.parametrize("name", ESCAPES)
def test_escaping_names_are_rejected(tmp_path, name):
    with pytest.raises(UnsafePathError):
        confine(tmp_path, name)
    with pytest.raises(UnsafePathError):
        safe_key(name)


def test_confined_paths_stay_inside(tmp_path):
    assert confine(tmp_path, "scores", "a.parquet") == tmp_path.resolve() / "scores" / "a.parquet"
    assert confine(tmp_path, "scores/./b.parquet") == tmp_path.resolve() / "scores" / "b.parquet"
    assert relative_parts("a//b/./c") == ["a", "b", "c"]
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="outside"):
        confine(tmp_path, "link", "x.parquet")  # a symlink does not get around it either


@pytest.mark.parametrize(
    "key, ok",
    [
        ("web__web-00000", True),
        ("a.b_c-d", True),
        ("x" * 200, True),
        ("../x", False),
        ("a..b", False),
        ("-a", False),
        (".a", False),
        ("a/b", False),
        ("a b", False),
        ("é", False),
        ("a\nb", False),
    ],
)
def test_one_shard_key_rule(key, ok):
    """`paths.safe_key` is the one key rule: the graph's `corpus.validate_key` is that very function."""
    from attention_influence.io.corpus import validate_key

    assert validate_key is safe_key
    if ok:
        assert safe_key(key) == key
    else:
        with pytest.raises(UnsafePathError, match="unsafe shard key"):
            safe_key(key)


def test_workdir_refuses_escaping_shard_keys(tmp_path):
    from resources import Workdir

    workdir = Workdir(path=str(tmp_path))
    assert workdir.score_path("web__a") == tmp_path.resolve() / "scores" / "web__a.parquet"
    for key in ["../evil", "/abs", "a/../../b", ".."]:
        with pytest.raises(ValueError):
            workdir.score_path(key)
        with pytest.raises(ValueError):
            workdir.staging_path(key)


# ------------------------------------------------------------------------------------------------ remote code


def test_trust_remote_code_is_off_by_default():
    from ai_assets.definitions import build_resources
    from attention_influence.cli import build_parser
    from attention_influence.config import load_config
    from attention_influence.influence.models import load_model
    from attention_influence.shards import run_score_job

    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False
    assert inspect.signature(run_score_job).parameters["trust_remote_code"].default is False
    parser = build_parser()
    assert (
        parser.parse_args(["score", "--heads", "h", "--input", "i", "--output", "o"]).trust_remote_code
        is False
    )
    assert parser.parse_args(["heads", "--corpus", "c", "--out", "o"]).trust_remote_code is False
    resources = build_resources(load_config(env={"AI_CORPUS": "x/*.parquet"}).config)
    assert resources["model"].trust_remote_code is False


def test_model_code_in_a_folder_is_not_executed(tmp_path, tiny_model_dir):
    from attention_influence.influence.models import load_model

    folder, marker = tmp_path / "model", tmp_path / "EXECUTED"
    folder.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.name.startswith("tokenizer"):
            (folder / f.name).write_bytes(f.read_bytes())
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "custom_llama",
                "architectures": ["CustomModel"],
                "auto_map": {
                    "AutoConfig": "configuration_custom.CustomConfig",
                    "AutoModelForCausalLM": "modeling_custom.CustomModel",
                },
            }
        )
    )
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    (folder / "configuration_custom.py").write_text(code)
    (folder / "modeling_custom.py").write_text(code)
    with pytest.raises(Exception, match="trust_remote_code"):
        load_model(str(folder), device="cpu")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ SQL


def sql_calls(path: Path):
    """Calls of execute/sql/executemany/query whose statement argument is built from strings at run time."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.args
            and node.func.attr in ("execute", "executemany", "sql", "query", "read_sql")
        ):
            arg = node.args[0]
            formatted = (
                isinstance(arg, ast.JoinedStr)
                or isinstance(arg, ast.BinOp)
                or (
                    isinstance(arg, ast.Call)
                    and isinstance(arg.func, ast.Attribute)
                    and arg.func.attr == "format"
                )
            )
            if formatted:
                yield f"{path.relative_to(REPO)}:{node.lineno}"


def test_sql_statements_are_never_formatted():
    sources = [p for folder in ("ai_assets", "resources") for p in (REPO / folder).rglob("*.py")]
    assert sources
    offenders = [hit for p in sources for hit in sql_calls(p)]
    assert offenders == [], f"SQL built by string formatting: {offenders}"
    for sql_file in sorted((REPO / "sql").glob("*.sql")):
        text = sql_file.read_text()
        assert "{" not in text and "%s" not in text, f"{sql_file.name}: placeholders must be $name or ?"


def test_hostile_values_and_paths_are_bound_as_data(tmp_path):
    """A domain holding SQL and a file name holding a quote go through the cut as data: nothing is dropped."""
    from resources import DuckDB

    folder = tmp_path / "it's a dir"
    folder.mkdir()
    rows = pl.DataFrame(
        {
            "id": ["a", "b", "c"],
            "domain": [EVIL, EVIL, "web"],
            "n_tokens": [5, 6, 7],
            "loss_base": [1.0, 1.0, 1.0],
            "loss_ref": [1.5, 1.2, 1.1],
            "score": [0.5, 0.2, 0.1],
            "head_set_id": ["h"] * 3,
            "shard": ["s'1"] * 3,
            "model": ["m"] * 3,
        }
    )
    path = folder / "s'1.parquet"
    rows.write_parquet(path)
    db = DuckDB(database=str(tmp_path / "selection.duckdb"))
    with db.connect() as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
        create_cut_table(con, [str(path)], 0.5)  # its statements, values bound
        assert con.execute("SELECT count(*) FROM t").fetchone() == (1,)
        got = con.execute(
            "SELECT domain, count(*), count(*) FILTER (WHERE selected) FROM domain_cut "
            "GROUP BY domain ORDER BY domain"
        ).fetchall()
    assert got == [("web", 1, 1), (EVIL, 2, 1)]
    assert duckdb.connect().execute("SELECT ? = ?", [EVIL, EVIL]).fetchone() == (True,)


# ------------------------------------------------------------------------------------------------ unreachable


@pytest.mark.parametrize(
    "uri, cause",
    [
        ("http://127.0.0.1:9/shard.parquet", "is unreachable"),
        ("/nonexistent/folder/shard.parquet", "does not exist"),
    ],
)
def test_unreachable_corpus_uris_name_the_uri(uri, cause):
    with pytest.raises(InputError) as err:
        read_shard(uri, "text", "id", "domain")
    assert str(err.value).startswith(f"{uri}: Parquet shard {cause}")
    assert "\n" not in str(err.value)


def test_describe_unreadable_causes():
    assert (
        describe_unreadable("s3://b/x.parquet", ImportError("Install s3fs to access S3"))
        == "s3://b/x.parquet: Parquet shard cannot be opened: s3:// needs the package s3fs"
    )
    assert "not accessible with the current credentials" in describe_unreadable(
        "gs://b/x.parquet", RuntimeError("Your default credentials were not found.")
    )
    assert "is corrupt or truncated" in describe_unreadable(
        "x.parquet", RuntimeError("The file must end with PAR1")
    )
    assert "permission denied" in describe_unreadable("x.parquet", PermissionError(13, "Permission denied"))


def test_unreachable_model_specs_name_the_spec(tmp_path):
    from attention_influence.influence.models import ModelLoadError, load_model

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest: no hub is contacted
    cases = {
        str(tmp_path / "missing-model"): "model folder not found",
        str(tmp_path / "missing.gguf"): "GGUF file not found",
        "hf://nobody-ai-test/no-such-model": "cannot load model 'hf://nobody-ai-test/no-such-model'",
        "s3://no-such-bucket-ai-test/model": "s3://no-such-bucket-ai-test/model",
    }
    (tmp_path / "not-a-model").mkdir()
    cases[str(tmp_path / "not-a-model")] = "is not a transformers model folder (no config.json)"
    for spec, expected in cases.items():
        with pytest.raises(ModelLoadError) as err:
            load_model(spec, device="cpu")
        assert expected in str(err.value), (spec, str(err.value))
