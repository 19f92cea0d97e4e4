"""Shard discovery, partition keys, work-dir paths and settings: the corpus side of the graph, no model."""

from __future__ import annotations

import io
import os

import polars as pl
import pytest
from conftest import SAMPLE_CORPUS, require_shared

from attention_influence.io.corpus import CorpusError, list_shards, resolve_shard, shard_key, validate_key
from resources import Workdir


def write(path, n=3, domain=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {"id": [f"{path.stem}-{i}" for i in range(n)], "text": ["Some text here."] * n}
    if domain:
        rows["domain"] = [path.parent.name] * n
    pl.DataFrame(rows).write_parquet(path)
    return path


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    for rel in ["web/web-0.parquet", "web/web-1.parquet", "code/part 0.parquet", "code/nested/deep.parquet"]:
        write(root / rel)
    (root / "web" / "README.md").write_text("not a shard")
    return root


def test_glob_folder_and_file_specs_give_the_same_keys(corpus, monkeypatch):
    by_glob = list_shards(str(corpus / "*" / "*.parquet"))
    assert [s.key for s in by_glob] == ["code__part_0", "web__web-0", "web__web-1"]
    assert [s.folder for s in by_glob] == ["code", "web", "web"]
    by_folder = list_shards(str(corpus))  # every Parquet file below it, nested ones too
    assert [s.key for s in by_folder] == ["code__nested__deep", "code__part_0", "web__web-0", "web__web-1"]
    assert list_shards(str(corpus / "web" / "web-1.parquet"))[0].key == "web__web-1"
    assert [s.key for s in list_shards(str(corpus / "web" / "*.parquet"))] == ["web__web-0", "web__web-1"]
    monkeypatch.chdir(corpus.parent)  # a relative spec names the same shards with the same keys
    assert list_shards("corpus/*/*.parquet") == by_glob
    for s in by_folder:
        assert validate_key(s.key) == s.key and os.path.isabs(s.uri)


def test_fingerprint_changes_when_the_file_changes(corpus):
    spec = str(corpus / "*" / "*.parquet")
    before = {s.key: s.fingerprint for s in list_shards(spec)}
    assert before == {s.key: s.fingerprint for s in list_shards(spec)}
    write(corpus / "web" / "web-1.parquet", n=5)
    after = {s.key: s.fingerprint for s in list_shards(spec)}
    assert [k for k in before if before[k] != after[k]] == ["web__web-1"]


@pytest.mark.parametrize(
    "rel,key",
    [
        ("a/b.parquet", "a__b"),
        ("dom ain/x y.parquet", "dom_ain__x_y"),
        ("../evil/..x...parquet", "s___evil___x_"),
        ("é/ü.parquet", "s____"),
        (".hidden/f.parquet", "hidden__f"),
    ],
)
def test_shard_keys_are_safe(rel, key):
    assert shard_key(rel) == key
    assert validate_key(key) == key


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".x", "x..y", "/abs", "a\\b", "k" * 300])
def test_unsafe_keys_are_rejected(bad):
    with pytest.raises(ValueError, match="unsafe shard key"):
        validate_key(bad)


def test_two_files_with_one_key_is_an_error(tmp_path):
    write(tmp_path / "c" / "web" / "a b.parquet")
    write(tmp_path / "c" / "web" / "a_b.parquet")
    with pytest.raises(CorpusError, match="same partition key 'web__a_b'"):
        list_shards(str(tmp_path / "c"))


def test_missing_corpus_and_deleted_shard_name_the_path(corpus):
    with pytest.raises(CorpusError, match="does not exist"):
        list_shards(str(corpus / "nope"))
    with pytest.raises(CorpusError, match="no corpus given"):
        list_shards("")
    with pytest.raises(CorpusError, match=r"\.jsonl' matches no shards: accepted formats are Parquet"):
        list_shards(str(corpus / "*" / "*.jsonl"))  # never a silent empty corpus
    spec = str(corpus / "*" / "*.parquet")
    (corpus / "web" / "web-0.parquet").unlink()
    with pytest.raises(CorpusError, match="'web__web-0' was registered as a partition but is no longer"):
        resolve_shard(spec, "web__web-0")
    with pytest.raises(ValueError, match="unsafe shard key"):
        resolve_shard(spec, "../web__web-1")


def test_remote_filesystems_through_fsspec():
    """memory:// is a real fsspec filesystem: URIs keep their protocol, keys are as for local files."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for rel in ["bucket/corpus/web/w0.parquet", "bucket/corpus/math/m0.parquet"]:
        buf = io.BytesIO()
        pl.DataFrame({"id": ["a"], "text": ["t"]}).write_parquet(buf)
        fs.pipe(rel, buf.getvalue())
    shards = list_shards("memory://bucket/corpus/*/*.parquet")
    assert [(s.key, s.folder) for s in shards] == [("math__m0", "math"), ("web__w0", "web")]
    for s in shards:  # the URI opens again through fsspec
        assert s.uri.startswith("memory://")
        with fsspec.open(s.uri, "rb") as f:
            assert pl.read_parquet(f)["id"].to_list() == ["a"]
    fs.rm("bucket", recursive=True)


def test_missing_driver_names_the_package(monkeypatch):
    """Without s3fs (hidden here: the dev install has it) the error names the package to install."""
    import sys

    import fsspec.registry  # noqa: F401  (the module; `fsspec.registry` the attribute is a read-only view)

    loaded = sys.modules["fsspec.registry"]._registry  # filesystem classes already imported
    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` raises ImportError
    for protocol in ("s3", "s3a"):
        monkeypatch.delitem(loaded, protocol, raising=False)
    with pytest.raises(CorpusError, match="install s3fs"):
        list_shards("s3://bucket/corpus/*/*.parquet")


def test_shared_sample_corpus_has_ten_shards():
    require_shared(SAMPLE_CORPUS)
    shards = list_shards(str(SAMPLE_CORPUS / "*" / "*.parquet"))
    assert len(shards) == 10
    assert shards[0].key == "math__math-00000-of-00002"
    assert {s.folder for s in shards} == {"math", "python_code", "textbook", "web_edu"}


def test_workdir_paths_cannot_escape(tmp_path):
    work = Workdir(path=str(tmp_path / "work"))
    assert work.score_path("web__w0") == (tmp_path / "work" / "scores" / "web__w0.parquet").resolve()
    for bad in ["../x", "/etc/passwd", "a/../../b"]:
        with pytest.raises(ValueError):
            work.score_path(bad)
    with pytest.raises(ValueError, match="escapes the work dir"):
        work.inside("..", "elsewhere")


def test_a_shard_is_resolved_without_listing_the_corpus(tmp_path, monkeypatch):
    """A scoring step finds its shard by looking up the paths its key can come from, not by a listing;
    the result is the listing's Shard (same key, URI, fingerprint), in every layout and format."""
    import fsspec.implementations.local as local

    from attention_influence.io import corpus as corpus_mod

    for rel in ["web/w-0.parquet", "web/w-1.jsonl.gz", "code/deep/c-0.jsonl", "top.parquet"]:
        (tmp_path / "c" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "c" / rel).write_bytes(b"x")
    specs = [str(tmp_path / "c"), str(tmp_path / "c" / "*" / "*.parquet"), str(tmp_path / "c" / "**")]
    for spec in specs:
        listed = corpus_mod.list_shards(spec)
        calls = []
        for name in ("glob", "find", "ls"):
            original = getattr(local.LocalFileSystem, name)
            monkeypatch.setattr(
                local.LocalFileSystem,
                name,
                lambda self, *a, _o=original, _n=name, _c=calls, **k: _c.append(_n) or _o(self, *a, **k),
            )
        for shard in listed:
            assert corpus_mod.resolve_shard(spec, shard.key) == shard
        listing = [c for c in calls if c in ("glob", "find")]
        monkeypatch.undo()
        if "**" in spec:
            assert listing, spec  # a ** glob is listed (its keys cannot be mapped back to one path)
        else:
            assert not listing, (spec, calls)
