"""Every report kind in a real browser (Chromium from the distribution, driven by playwright).

Each page loads with no console error and no network request; tooltips, the viewer's head menu
and token hover work on reports of small real runs. Screenshots of the scan report at 1400 px go
to ``build/screenshots/`` (or ``$ATTNLAB_SCREENSHOTS``).
"""

import os
import shutil
from pathlib import Path

import pytest
import torch

from attnlab import circuits, edits
from attnlab.circuits.run import run_circuit
from attnlab.models import hf
from attnlab.runs.edit import run_edit
from attnlab.runs.scan import scan
from attnlab.train import sweep
from tests.conftest import tiny_causal_lm
from tests.train.toy import Lag

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra) for the browser tests")
CHROMIUM = os.environ.get("ATTNLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CELLS = "concat_1_layer_1_marks"  # the viewer's coloured cells (masked ones are concat_1_layer_0_marks)
SHOTS = Path(os.environ.get("ATTNLAB_SCREENSHOTS") or Path(__file__).resolve().parents[2] / "build" / "screenshots")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"),
]


@pytest.fixture(scope="module")
def runs(smollm2, tmp_path_factory):
    """Small real runs of every kind on a tiny llama with SmolLM2's vocabulary, and their reports on disk."""
    tok = smollm2[1]
    torch.manual_seed(0)
    model = hf.instrument(tiny_causal_lm("llama", vocab_size=len(tok), max_position_embeddings=256))
    text = "Full fathom five thy father lies; of his bones are coral made; those are pearls that were his eyes. " * 3
    out = {
        "scan": scan(model, tok, [text], probes=["sink", "entropy", "patterns", "extreme", "layer_importance"], maps=[(1, 3)]),
        "circuit": run_circuit(model, circuits.ioi_pairs(tok, 4), "patch", settings={"task": "ioi"}, tokenizer=tok),
        "edit": run_edit(model, tok, [edits.parse("head_mask:heads=L0H0")], ["logit_diff"], specs_text=["head_mask:heads=L0H0"]),
        "train": sweep(
            Lag, {}, mechanisms=["mha", "linear"], seeds=2, executor="serial", threads=1,
            model_options={"dim": 16, "heads": 2, "layers": 1}, train_options={"steps": 40, "batch_size": 16, "eval_every": 20, "eval_batches": 1},
        ),
    }  # fmt: skip
    d = tmp_path_factory.mktemp("reports")
    return {k: (r, r.report(d / f"{k}.html")) for k, r in out.items()}


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, path: Path, width: int = 1400):
    """The report loaded and drawn; ``page.problems`` lists console errors and every request but the page's own."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    url = path.resolve().as_uri()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def route(r):
        if r.request.url == url:
            r.continue_()
        else:
            problems.append(f"request: {r.request.url}")
            r.abort()

    page.route("**/*", route)
    page.goto(url)
    page.evaluate("window.attnlabReady")
    page.problems = problems
    return page


def tooltip(page) -> str:
    page.wait_for_selector("#vg-tooltip-element.visible", timeout=5000)
    return " ".join(page.inner_text("#vg-tooltip-element").split())


def marks(page, figure: str, group: str):
    """The drawn marks (SVG paths) of a figure's mark group (Vega's class for it: ``layer_1_marks``), in data order."""
    return page.locator(f'[data-figure="{figure}"] g.{group}').first.locator("path")


@pytest.mark.parametrize("kind", ["scan", "edit", "train", "circuit"])
def test_every_report_loads_offline_without_errors_and_draws_every_figure(runs, browser, kind):
    result, path = runs[kind]
    page = open_page(browser, path)
    names = [f.name for f in result.page().figures()]
    assert page.problems == []
    assert sorted(page.evaluate("Object.keys(window.attnlabViews)")) == sorted(names) and names
    assert page.locator("div.vis svg").count() == len(names)
    page.close()


def test_hovering_a_heatmap_cell_shows_its_layer_head_and_value(runs, browser):
    result, path = runs["scan"]
    page = open_page(browser, path)
    grid = result.findings["sink"]["heatmaps"]["first_token_mass"]
    drawn = [(layer, h, v) for layer, row in enumerate(grid) for h, v in enumerate(row) if v == v]  # data order, NaN not drawn
    i = next(i for i, (_, _, v) in enumerate(drawn) if 0.01 < v < 100 and i > 0)  # a value both formats print alike
    layer, h, v = drawn[i]
    marks(page, "sink.first_token_mass", "layer_1_marks").nth(i).hover()
    text = tooltip(page)
    assert f"layer {layer} head {h} first-token mass {v:.3g}" in text and "what it measures" in text
    page.close()


def test_hovering_a_circuit_heatmap_cell_shows_its_layer_head_score_and_meaning(runs, browser):
    result, path = runs["circuit"]
    page = open_page(browser, path)
    drawn = [(layer, h, v) for layer, row in enumerate(result.grid) for h, v in enumerate(row)]  # data order
    i = next(i for i, (_, _, v) in enumerate(drawn) if abs(v) > 0.01 and i > 0)
    layer, h, v = drawn[i]
    marks(page, "circuit.scores", "layer_1_marks").nth(i).hover()
    text = tooltip(page)
    assert f"layer {layer} head {h} score (fraction restored) {v:.3g}" in text.replace("−", "-")
    assert "fraction of the clean−corrupted logit difference restored" in text
    assert result.meta["pairs"][0]["clean"] in page.inner_text("#section-pairs")
    page.close()


def test_choosing_a_head_in_the_viewer_draws_its_map(runs, browser):
    result, path = runs["scan"]
    page = open_page(browser, path)
    menu = page.locator('[data-figure="attention_maps"] .vega-bindings select')
    labels = menu.evaluate("s => Array.from(s.options).map(o => o.text)")
    assert labels == [f"L{m['layer']}H{m['head']}: {m['why']}" for m in result.maps] and labels[0].startswith("L1H3: chosen (--maps)")
    assert len(labels) >= 2
    before = marks(page, "attention_maps", CELLS).evaluate_all("ps => ps.map(p => p.getAttribute('fill'))")
    menu.select_option(index=1)
    page.wait_for_timeout(200)
    assert marks(page, "attention_maps", CELLS).evaluate_all("ps => ps.map(p => p.getAttribute('fill'))") != before
    m = result.maps[1]
    seen = [(q, k, w) for q, row in enumerate(m["matrix"]) for k, w in enumerate(row) if w is not None]
    assert marks(page, "attention_maps", CELLS).count() == len(seen)
    i = len(seen) - 2  # a cell of the last query row
    q, k, w = seen[i]
    marks(page, "attention_maps", CELLS).nth(i).hover()
    assert f"attention weight {w:.3f}" in tooltip(page) and f"query {q} " in tooltip(page)
    page.close()


def test_hovering_a_token_lights_its_row_and_column(runs, browser):
    result, path = runs["scan"]
    page = open_page(browser, path)
    m = result.maps[0]
    seen = [(q, k) for q, row in enumerate(m["matrix"]) for k, w in enumerate(row) if w is not None]
    t = len(m["tokens"]) // 2
    page.locator('[data-figure="attention_maps"] g.mark-text').first.locator("text").nth(t).hover()
    page.wait_for_timeout(200)
    opacity = marks(page, "attention_maps", CELLS).evaluate_all("ps => ps.map(p => p.getAttribute('opacity'))")
    lit = {cell for cell, o in zip(seen, opacity) if o == "1"}
    assert lit == {(q, k) for q, k in seen if q == t or k == t}  # its row (what it attends to) and column (who attends to it)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#figure-attention_maps").screenshot(path=SHOTS / "scan-viewer-1400.png")
    page.mouse.move(0, 0)
    page.screenshot(path=SHOTS / "scan-1400.png", full_page=True)
    assert (SHOTS / "scan-1400.png").stat().st_size > 10_000
    page.close()


@pytest.mark.parametrize(
    ("kind", "figure", "words"), [("edit", "examples.logit_diff", "example 0"), ("train", "test_metric", "test metric")]
)
def test_hovering_a_mark_of_the_edit_and_train_reports_shows_its_value(runs, browser, kind, figure, words):
    _, path = runs[kind]
    page = open_page(browser, path)
    layer = 2 if kind == "train" and page.locator(f'[data-figure="{figure}"] g.layer_2_marks').count() else 0
    page.locator(f'[data-figure="{figure}"] g.layer_{layer}_marks').first.locator("path").first.hover(force=True)
    assert words in tooltip(page)
    page.close()
