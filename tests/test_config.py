"""The one configuration: profiles, files, precedence, errors that name key and file, the old variables,
`config show`, the generated reference, and the resources built from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from attention_influence.config import (
    DEPRECATED_ENV,
    PROFILE_DIR,
    ConfigError,
    load_config,
    reference_markdown,
    show,
)
from resources import SelectionProfile

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_both_shipped_profiles_load(name):
    c = load_config(env={}, profile=name).config
    assert c.profile == name
    if name == "demo":
        assert (c.heads.n_probes, c.heads.probe_max_tokens, c.scoring.doc_max_tokens) == (40, 512, 256)
        assert (c.scoring.max_docs_per_shard, c.evaluation.control_docs, c.evaluation.random_draws) == (
            30,
            16,
            1,
        )
        assert c.post_training.demo_samples == 150
    else:
        assert (c.heads.n_probes, c.heads.probe_max_tokens, c.scoring.doc_max_tokens) == (800, 4096, 4096)
        assert c.scoring.windows is True and c.scoring.max_docs_per_shard is None
        assert (c.heads.top_frac, c.cut.top_frac, c.scoring.batch_tokens) == (0.05, 0.2, 32768)
    assert sorted(p.stem for p in PROFILE_DIR.glob("*.toml")) == ["demo", "paper"]


def test_defaults_and_resolved_paths(tmp_path):
    c = load_config(env={"AI_WORKDIR": str(tmp_path)}).config
    assert c.profile == "demo" and c.model.spec == "smollm2-135m" and c.corpus_is_demo
    assert c.corpus_uri == str(tmp_path / "demo_corpus" / "*" / "*.parquet")
    assert c.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert c.sft_input == str(tmp_path / "sft_input" / "*.jsonl")


def test_unknown_key_names_key_and_file(tmp_path):
    f = write(tmp_path / "run.toml", "[cut]\ntopfrac = 0.3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'cut.topfrac' in .*run.toml.*top_frac"):
        load_config(f, env={})
    g = write(tmp_path / "run.yaml", "scorng:\n  windows: true\n")
    with pytest.raises(ConfigError, match=r"unknown key 'scorng' in .*run.yaml"):
        load_config(g, env={})


def test_invalid_value_names_key_and_file(tmp_path):
    f = write(tmp_path / "run.toml", "[heads]\nn_probes = -1\n[cut]\npolicy = 'best'\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    text = str(err.value)
    assert f"heads.n_probes = -1 in {f}" in text and f"cut.policy = 'best' in {f}" in text
    bad_toml = write(tmp_path / "broken.toml", "[cut\n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load_config(bad_toml, env={})
    with pytest.raises(ConfigError, match=r"profile = 'huge' in .*run2.toml.*demo, paper"):
        load_config(write(tmp_path / "run2.toml", 'profile = "huge"\n'), env={})


def test_precedence_defaults_profile_file_environment_override(tmp_path):
    f = write(
        tmp_path / "run.toml",
        'profile = "paper"\n[heads]\nn_probes = 12\n[deploy]\nworkdir = "/from/file"\n'
        "[scoring]\ndoc_max_tokens = 512\nmax_docs_per_shard = 7\n",
    )
    loaded = load_config(
        f, env={"AI_WORKDIR": str(tmp_path / "env")}, overrides={"scoring.doc_max_tokens": 99}
    )
    c = loaded.config
    assert c.cut.policy == "docs" and loaded.source("cut.policy") == "default"  # defaults
    assert (
        c.heads.probe_max_tokens == 4096
        and loaded.source("heads.probe_max_tokens") == "profile paper (paper.toml)"
    )
    assert c.heads.n_probes == 12 and loaded.source("heads.n_probes") == str(f)  # file over profile
    assert c.workdir == tmp_path / "env" and loaded.source("deploy.workdir") == "environment AI_WORKDIR"
    assert c.scoring.doc_max_tokens == 99 and loaded.source("scoring.doc_max_tokens") == "command line"
    assert c.scoring.max_docs_per_shard == 7
    # the file's null (TOML: "null") unsets what the profile set
    g = write(tmp_path / "null.toml", '[scoring]\nmax_docs_per_shard = "null"\n')
    assert load_config(g, env={}).config.scoring.max_docs_per_shard is None
    # AI_CONFIG names the file when no path is given
    assert load_config(env={"AI_CONFIG": str(f)}).config.heads.n_probes == 12


def test_old_variables_still_work_with_a_warning_naming_the_new_key():
    with pytest.warns(FutureWarning, match=r"AI_DOC_TOKENS is deprecated: set `scoring.doc_max_tokens`"):
        loaded = load_config(env={"AI_DOC_TOKENS": "0", "AI_MAX_DOCS": "all", "AI_N_PROBES": "9"})
    c = loaded.config
    assert c.scoring.doc_max_tokens is None and c.scoring.max_docs_per_shard is None and c.heads.n_probes == 9
    assert loaded.source("heads.n_probes") == "environment AI_N_PROBES (deprecated)"
    with pytest.warns(FutureWarning, match="AI_PROFILE"):
        assert load_config(env={"AI_PROFILE": "paper"}).config.heads.n_probes == 800
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match="environment AI_DOMAIN_TOP_FRAC"):
        load_config(env={"AI_DOMAIN_TOP_FRAC": "1.5"})
    with pytest.warns(FutureWarning):
        c = load_config(env={"AI_QUALITY_COLUMNS": "edu_score, label", "AI_MIX_SHUFFLE_SEED": "none"}).config
    assert c.evaluation.quality_columns == ["edu_score", "label"] and c.mix.shuffle_seed is None
    assert all("." in key for key in DEPRECATED_ENV.values())


def test_config_show_names_every_source(tmp_path):
    f = write(tmp_path / "run.toml", "[cut]\ntop_frac = 0.1\n")
    out = subprocess.run(
        [sys.executable, "-m", "attention_influence.cli", "--config", str(f), "--set", "heads.n_probes=5"]
        + ["config", "show"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "AI_WORKDIR": str(tmp_path)},
        check=True,
    ).stdout
    assert f"top_frac = 0.1  # {f}" in out
    assert "n_probes = 5  # --set" in out
    assert 'workdir = "' + str(tmp_path) + '"  # environment AI_WORKDIR' in out
    assert "doc_max_tokens = 256  # profile demo (demo.toml)" in out
    assert 'policy = "docs"  # default' in out
    assert show(load_config(f, env={})).count("\n[") == 13  # every section


def test_cli_flags_default_to_the_configuration_and_win_over_it(tmp_path):
    from attention_influence.cli import build_parser, load_from_flags

    f = write(
        tmp_path / "run.toml", "[scoring]\ndoc_max_tokens = 77\nwindows = true\n[model]\ndtype = 'float32'\n"
    )

    def parse(argv):
        loaded, rest = load_from_flags(argv)
        return build_parser(loaded).parse_args(rest)

    argv = ["--config", str(f), "score", "--heads", "h", "--input", "i", "--output", "o"]
    args = parse(argv)
    assert (args.max_tokens, args.windows, args.dtype) == (77, True, "float32")
    argv += ["--max-tokens", "12", "--no-windows"]
    args = parse(argv)
    assert (args.max_tokens, args.windows) == (12, False)
    # --config and --set after the command too, --set above the file
    args = parse(["score", "--heads", "h", "--input", "i", "--output", "o", "--config", str(f)])
    assert (args.max_tokens, args.dtype) == (77, "float32")
    args = parse(
        [
            "score",
            "--heads",
            "h",
            "--input",
            "i",
            "--output",
            "o",
            "--config",
            str(f),
            "--set",
            "scoring.doc_max_tokens=5",
        ]
    )
    assert args.max_tokens == 5


def test_configuration_reference_is_generated_and_current():
    doc = REPO / "docs" / "configuration.md"
    assert doc.exists(), "run `attention-influence config docs --out docs/configuration.md`"
    assert doc.read_text() == reference_markdown(), (
        "docs/configuration.md is stale: run `attention-influence config docs --out docs/configuration.md`"
    )
    for key in ("`cut.top_frac`", "`scoring.doc_max_tokens`", "`post_training.select_by`", "`AI_DOC_TOKENS`"):
        assert key in doc.read_text()


def test_resources_take_the_sections_and_check_launchpad_values(tmp_path):
    import dagster as dg

    from ai_assets.definitions import build_resources

    config = load_config(env={"AI_WORKDIR": str(tmp_path)}, profile="paper").config
    res = build_resources(config)
    assert res["profile"].heads.n_probes == 800 and res["profile"].scoring.windows is True
    assert res["model"].spec == "smollm2-135m" and res["corpus"].uri == config.corpus_uri
    assert (
        res["post_training"].input == config.sft_input
        and res["mlflow"].tracking_uri == config.mlflow_tracking_uri
    )

    @dg.asset
    def probe(profile: SelectionProfile) -> int:
        return profile.heads.n_probes

    ok = dg.materialize(
        [probe],
        resources={"profile": res["profile"]},
        run_config={"resources": {"profile": {"config": {"heads": {"n_probes": 3}}}}},
    )
    assert ok.output_for_node("probe") == 3  # a launchpad override wins over the file
    with pytest.raises(dg.DagsterResourceFunctionError) as err:
        dg.materialize(
            [probe],
            resources={"profile": res["profile"]},
            run_config={"resources": {"profile": {"config": {"heads": {"top_frac": 2.0}}}}},
        )
    assert "heads.top_frac = 2.0 in the run's resource config" in str(err.value.__cause__)
