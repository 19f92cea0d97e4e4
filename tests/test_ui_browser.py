"""The Dagster UI and the MLflow UI in a real headless Chromium, over a graph built with the tiny model by
`python -m ai_assets.materialize`: the lineage chain, the score partitions, a run re-executed from the UI,
and the MLflow run page with its metrics and figures.

Debian's chromium (/usr/bin/chromium; `.ci/run` installs it) driven by Playwright's Python package: nothing
is downloaded at run time. Outside CI the test skips when either is missing. Screenshots land in the test's
temporary folder (`AI_UI_SCREENSHOTS=<dir>` keeps them).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port
from graph_helpers import build_corpus
from ui_helpers import start_ui

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require_browser():
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is absent (Debian: apt-get install chromium; .ci/run installs it)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is not installed (pip install playwright)"
    if reason and IN_CI:
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def uis(tmp_path_factory, tiny_model_dir):
    """A tiny graph materialized through the code location's jobs, then `make ui` (scripts/ui.sh) over it."""
    _require_browser()
    root = tmp_path_factory.mktemp("ui")
    corpus = build_corpus(root / "corpus")
    dagster_port, mlflow_port = free_port(), free_port()
    config = root / "run.toml"
    config.write_text(
        f'[model]\nspec = "{tiny_model_dir}"\ndtype = "float32"\ndevice = "cpu"\n'
        "[heads]\nn_probes = 3\nprobe_max_tokens = 510\ntop_frac = 0.25\n"
        '[scoring]\ndoc_max_tokens = 64\nmax_docs_per_shard = "null"\n'  # TOML's null: every row
    )
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "AI_CONFIG": str(config),
        "AI_CORPUS": str(corpus / "*" / "*.parquet"),
        "AI_WORKDIR": str(root / "work"),
        "DAGSTER_HOME": str(root / "dagster_home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'work' / 'mlflow.db'}",
        "AI_MLFLOW_UI_URL": f"http://127.0.0.1:{mlflow_port}",
        "AI_EVAL_DIR": str(root / "no-eval"),  # the mirror effect runs on held-out probes only
        "OMP_NUM_THREADS": "1",
    }
    (root / "dagster_home").mkdir()
    (root / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    subprocess.run(
        [sys.executable, "-m", "ai_assets.materialize"],
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=600,
    )
    ui = start_ui(env, dagster_port, mlflow_port)
    try:
        yield {"dagster": f"http://127.0.0.1:{dagster_port}", "mlflow": f"http://127.0.0.1:{mlflow_port}"}
    finally:
        ui.send_signal(signal.SIGTERM)
        try:
            ui.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def browser(uis):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, tmp_path, request):
    pg = browser.new_page(viewport={"width": 1400, "height": 900})
    pg.set_default_timeout(60_000)
    yield pg
    shots = Path(os.environ.get("AI_UI_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(shots / f"{request.node.name}.png"))
    pg.close()


def _dismiss(pg) -> None:
    """Dagster's first-visit 'Join the community' dialog."""
    skip = pg.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=3000)
        skip.click()
    except Exception:  # noqa: BLE001 - no dialog this time
        pass


def test_lineage_chain(uis, page):
    page.goto(
        f"{uis['dagster']}/assets/selection_evaluation?view=lineage&lineageScope=upstream&lineageDepth=8"
    )
    page.get_by_text("document_scores").first.wait_for()
    _dismiss(page)
    text = page.inner_text("body")
    # long names are shortened in the nodes ("select…_evaluation")
    for pattern in (
        r"selector_model",
        r"corpus_shard",
        r"retrieval_pro\S*_set",
        r"retrieval_heads",
        r"document_scores",
        r"domain_cut",
        r"pretrain\S*_manifest",
        r"select\S*_evaluation",
    ):
        assert re.search(pattern, text), (pattern, text[-800:])


def test_score_partitions_materialized(uis, page):
    page.goto(f"{uis['dagster']}/assets/document_scores?view=partitions")
    page.get_by_text("Materialized (6)").wait_for()
    _dismiss(page)
    text = page.inner_text("body")
    assert "6 Partitions" in text and "Missing (0)" in text
    for key in ("alpha__alpha-0", "beta__beta-1", "gamma__gamma-1"):
        assert key in text


def test_corpus_shard_and_model_are_observed(uis, page):
    page.goto(f"{uis['dagster']}/assets/corpus_shard")
    page.get_by_text("Latest observation").wait_for()
    _dismiss(page)
    text = page.inner_text("body")
    assert "rows" in text and "size_bytes" in text and "fingerprint" in text
    page.goto(f"{uis['dagster']}/assets/selector_model")
    page.get_by_text("layers x heads").wait_for()
    assert "4 x 4 (2 KV heads)" in page.inner_text("body")


def test_run_of_a_named_job_is_re_executed_from_the_ui(uis, page):
    page.goto(f"{uis['dagster']}/runs")
    page.get_by_text("rank_retrieval_heads").first.wait_for()
    _dismiss(page)
    text = page.inner_text("body")
    for job in ("observe_selector_model", "rank_retrieval_heads", "score_shards", "select_and_evaluate"):
        assert job in text, job
    assert "partition: gamma__gamma-1" in text
    page.goto(f"{uis['dagster']}/locations/attention_influence/jobs/rank_retrieval_heads/runs")
    page.locator("a[href^='/runs/']").filter(has_text=re.compile(r"^[0-9a-f]{8}$")).first.click()
    page.get_by_text("2 assets").wait_for()  # the run names what it materialized
    button = page.get_by_role("button", name=re.compile("Re-execute all"))
    assert button.is_enabled()
    first = page.url
    button.click()
    page.wait_for_url(lambda url: url != first and re.search(r"/runs/[0-9a-f-]{36}", url) is not None)
    page.get_by_text("Success", exact=True).first.wait_for(timeout=180_000)
    page.get_by_text("2 assets").wait_for()


def test_overview_lists_the_jobs(uis, page):
    page.goto(f"{uis['dagster']}/overview/activity/timeline")
    page.get_by_text("score_shards").first.wait_for()
    _dismiss(page)
    assert "No runs or scheduled ticks" not in page.inner_text("body")


def _wait_for_inline_figures(page, dagster: str, asset: str, row: str, needle: str, count: int) -> None:
    """The asset page shows `count` figures whose URL holds `needle` as images in the metadata table (served
    by the MLflow UI), not behind "[Show Markdown]"."""
    page.goto(f"{dagster}/assets/{asset}")
    _dismiss(page)
    page.get_by_text(row).first.wait_for()
    page.wait_for_function(
        "([needle, count]) => [...document.images].filter(i => i.src.includes('get-artifact')"
        " && i.src.includes(needle) && i.naturalWidth > 300).length >= count",
        arg=[needle, count],
    )


def test_evaluation_figures_show_inline_in_dagster(uis, page):
    _wait_for_inline_figures(
        page, uis["dagster"], "selection_evaluation", "figure_mirror_effect", "figures/", 3
    )
    text = page.inner_text("body")
    assert "within noise" in text or "beyond noise" in text


def test_heads_heatmap_shows_inline_in_dagster(uis, page):
    _wait_for_inline_figures(page, uis["dagster"], "retrieval_heads", "heatmap_png", "head_scores", 1)


def test_mlflow_run_page_shows_metrics_and_figures(uis, page):
    page.goto(f"{uis['dagster']}/assets/selection_evaluation")
    _dismiss(page)
    link = page.locator("a[href*='workflowType=machine_learning'][href*='/runs/']").first
    link.wait_for()
    url = link.get_attribute("href")
    assert url.startswith(uis["mlflow"])
    page.goto(url)
    page.get_by_text("mirror/probe_em/retrieval_vs_base/within_noise").first.wait_for()
    text = page.inner_text("body")
    assert "Model training" in text and "Traces 0" not in text
    for metric in ("mirror/probe_em/base", "mirror/probe_em/n_items", "analysis/scored_tokens_mean_all/all"):
        assert metric in text, metric
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("figures").first.click()
    page.get_by_text("head_heatmap.png").click()
    page.get_by_text("figures/head_heatmap.png").first.wait_for()
    # the viewer shows the PNG itself (a blob: URL), a real picture of a few hundred pixels
    page.wait_for_function("() => [...document.images].some(i => i.complete && i.naturalWidth > 300)")


def test_asset_checks_show_their_results(uis, page):
    """The checks of what the metadata counted (ai_assets/asset_checks.py), passed, on the asset pages."""
    page.goto(f"{uis['dagster']}/assets/domain_cut?view=checks")
    page.get_by_text("selected_equals_k").first.wait_for()
    _dismiss(page)
    text = page.inner_text("body")
    assert "one_precision_per_domain" in text and "Passed" in text, text[-1500:]
    assert "Failed" not in text
    page.get_by_text("selected_equals_k").first.click()
    page.get_by_text(
        "domain(s) select exactly k"
    ).first.wait_for()  # the check's description of what it found
    page.goto(f"{uis['dagster']}/assets/document_scores?view=checks")
    for check in ("documents_reconcile", "ids_unique"):  # the list renders as the checks' records arrive
        page.get_by_text(check).first.wait_for(state="attached")
    for asset, check in (
        ("pretraining_manifest", "rows_equal_eligible_plus_selected"),
        ("mixed_corpus", "rows_and_texts_match_manifest"),
    ):
        page.goto(f"{uis['dagster']}/assets/{asset}?view=checks")
        # a long name is shown middle-truncated; the whole name is in a hidden measuring element
        page.get_by_text(check).first.wait_for(state="attached")
        page.get_by_text("Passed").first.wait_for()
