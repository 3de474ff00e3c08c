"""End to end in a real headless Chromium: start a tiny run from the UI, watch it live, collapse, compare.

Uses the system Chromium (never ``playwright install``) and a `streamlit run` on 127.0.0.1 with a temporary
workspace. Screenshots of every page go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from prunekit.bench.app import CHROMIUM, REPO_ROOT, AppServer, launch_chromium, wait_app_idle

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api")
SHOTS = REPO_ROOT / "test-artifacts" / "screenshots"


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _live_step(page) -> int:
    text = page.locator("[data-testid='stProgress']").first.inner_text(timeout=30000)
    m = re.search(r"step (\d+)", text)
    return int(m.group(1)) if m else -1


def _set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")


@pytest.fixture
def server(tmp_path):
    with AppServer(tmp_path / "ws") as s:
        yield s


def test_tiny_run_from_the_ui_to_collapse(server):
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(server.url)
            page.get_by_role("button", name="Start the default experiment").wait_for(timeout=60000)
            wait_app_idle(page)
            _shot(page, "home_empty")

            # Runs: a tiny run (256 samples, a few steps per epoch, logging every step).
            page.goto(server.url + "/Runs")
            page.get_by_text("Start a run").first.wait_for(timeout=60000)
            wait_app_idle(page)
            from prunekit.methods import list_methods

            method = "crisp" if "crisp" in list_methods() else "dpp"  # a gated method, so collapse has work
            page.get_by_role("combobox", name=re.compile("Method")).click()
            page.get_by_role("option", name=method, exact=True).click()
            wait_app_idle(page)
            _set_number(page, "Epochs", 3)
            _set_number(page, "Batch size", 16)
            _set_number(page, "Max steps per epoch (0 = all)", 16)
            _set_number(page, "Samples (shapes only, 0 = default)", 256)
            _set_number(page, "Log every (steps)", 1)
            page.get_by_role("button", name="Start run").click()
            page.get_by_text(re.compile(r"Started run `?r\d")).first.wait_for(timeout=60000)
            _shot(page, "runs")

            # Live: the step counter and the charts advance while it trains.
            page.goto(server.url + "/Live")
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60000)
            seen = set()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(seen) < 3:
                step = _live_step(page)
                if step > 0:
                    seen.add(step)
                if "status: done" in page.locator("[data-testid='stProgress']").first.inner_text():
                    break
                time.sleep(0.5)
            assert len(seen) >= 2, f"the live view never advanced: saw steps {sorted(seen)}"
            assert page.locator(".js-plotly-plot").count() >= 4
            _shot(page, "live")

            # A second tab on the same app works independently.
            other = browser.new_page(viewport={"width": 1200, "height": 900})
            other.goto(server.url + "/Explore")
            other.wait_for_selector(".js-plotly-plot .main-svg", timeout=60000)
            other.close()

            page.get_by_text("status: done").first.wait_for(timeout=180000)
            _shot(page, "live_done")

            page.goto(server.url + "/Explore")
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60000)
            wait_app_idle(page, 120000)
            _shot(page, "explore")
            # The what-if of a gated run's checkpoint answers; the cost axis reruns only the chart's fragment.
            assert page.get_by_text("channels kept").count() >= 1  # the run is a gated CRISP run with a checkpoint
            page.get_by_text("latency, batch 1 (after collapse)", exact=True).click()
            page.wait_for_selector(".js-plotly-plot .xtitle:has-text('latency at batch 1')", timeout=30000)
            wait_app_idle(page)
            assert page.get_by_text("What if the threshold were different?").is_visible()
            assert page.locator("[data-testid='stException']").count() == 0

            # Collapse & compare: the comparison table, or a clear message when collapse refuses.
            page.goto(server.url + "/Collapse")
            page.get_by_role("button", name="Collapse").wait_for(timeout=60000)
            wait_app_idle(page)
            page.get_by_role("button", name="Collapse").click()
            outcome = page.get_by_text(re.compile(r"Collapsed in|Collapse refused")).first
            outcome.wait_for(timeout=180000)
            wait_app_idle(page, 60000)
            _shot(page, "collapse")
            assert outcome.inner_text().startswith("Collapsed in"), outcome.inner_text()
            table = page.locator("[data-testid='stDataFrame']").first
            table.wait_for(state="visible", timeout=30000)  # drawn after the "Collapsed in" line: it raced once
            assert table.is_visible()
            assert page.get_by_text(re.compile(r"Original \(masked\) vs slim \(removed\)")).is_visible()
            widths = page.get_by_text("Layer widths: original vs slim")  # a plotly title: drawn after the table
            widths.first.wait_for(timeout=30000)
            assert widths.count() >= 1
            assert page.locator("[data-testid='stException']").count() == 0

            # Home again, now showing the most recent run.
            page.goto(server.url)
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60000)
            _shot(page, "home")
            assert page.locator("[data-testid='stException']").count() == 0
        finally:
            browser.close()


_BOXES_JS = """() => {
  const boxes = sel => Array.from(document.querySelectorAll(sel)).map(e => e.getBoundingClientRect())
    .filter(b => b.width > 0).map(b => [b.left, b.top, b.right, b.bottom]);
  return {legend: boxes('g.legend .bg'), labels: boxes('text.xtitle, text.ytitle, text.y2title, g.xtick text, '
          + 'g.ytick text, g.y2tick text'), yticks: boxes('g.ytick text').length};
}"""


def test_chart_legends_cover_no_axis_title_or_tick_label(tmp_path):
    """Issue 20 item 4, measured where it showed: in Chromium, at a narrow (two-column) and a wide chart width,
    no legend box intersects an axis title or tick label, and Layer widths names all of its 48 layers."""
    import numpy as np
    import pandas as pd

    from prunekit import viz

    steps = range(0, 100, 10)
    m = pd.DataFrame([(s, 0, n, v) for s in steps for n, v in (
        ("loss/task", 2 - s / 100), ("loss/struct", 0.1), ("acc/train", 0.5), ("acc/val", 0.4), ("acc/test", 0.4),
        ("macs_ratio/expected", 1 - s / 200), ("macs_ratio/relaxation", 0.8), ("macs_ratio/hard", 0.7),
        ("macs_ratio/train", 0.9), ("temperature", 5 - s / 25), ("lr", 0.1))], columns=["step", "epoch", "name", "value"])
    layers = [f"layer{i}.{j}" for i in range(1, 4) for j in range(7)]
    trend = pd.DataFrame([(s, 0, layer, "flip_rate", float(np.cos(s + k)), None) for s in steps
                          for k, layer in enumerate(layers)], columns=["step", "epoch", "layer", "name", "value", "data"])
    convs = [f"layer{i}.{j}.conv{k}" for i in range(1, 4) for j in range(8) for k in (1, 2)]
    widths = pd.DataFrame({"layer": convs, "before": 16, "after": [0 if i % 7 == 0 else 8 for i in range(48)]})
    figs = {"loss": viz.loss_figure(m), "acc": viz.accuracy_figure(m), "macs": viz.macs_figure(m, 0.5),
            "temp": viz.temperature_figure(m), "flip": viz.layer_trend_figure(trend, "flip_rate"),
            "widths": viz.width_figure(widths)}
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            for width in (420, 900):
                page = browser.new_page(viewport={"width": width, "height": 1200})
                for name, fig in figs.items():
                    html = tmp_path / f"{name}.html"
                    fig.write_html(html, include_plotlyjs="directory")  # plotly.min.js written once beside it
                    page.goto(html.as_uri())
                    page.wait_for_selector("g.legend .bg", state="attached", timeout=30000)
                    got = page.evaluate(_BOXES_JS)
                    hits = [lab for leg in got["legend"] for lab in got["labels"]
                            if not (leg[2] <= lab[0] or lab[2] <= leg[0] or leg[3] <= lab[1] or lab[3] <= leg[1])]
                    if hits:
                        _shot(page, f"legend_overlap_{name}_{width}")
                    assert not hits, f"{name} at {width}px: the legend covers {hits}"
                    if name == "widths":
                        assert got["yticks"] == 48
                page.close()
        finally:
            browser.close()


def _metric(page, label: str) -> str:
    """The value of the ``st.metric`` labelled ``label``."""
    box = page.locator("[data-testid='stMetric']", has_text=label).first
    box.wait_for(timeout=120000)
    return box.locator("[data-testid='stMetricValue']").inner_text()


@pytest.mark.timeout(1800)  # the default experiment trains for real: ~2 min on a quiet 2-core machine, 10+ when busy
def test_newcomer_walk_default_run_to_a_loaded_slim_model(server, tmp_path):
    """Issue 20, done-when: the newcomer's path end to end in Chromium. Start the default experiment from Home,
    see Live advance, find Explore's what-if at the method's own threshold giving the run's validation accuracy
    (within 1 point), see the Model view, collapse, download the slim model and load it with ``pk.load_slim``."""
    import zipfile

    import torch

    import prunekit as pk
    from prunekit.app_support import open_store

    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(120000)  # a first page load on a busy 2-core machine
        try:
            page.goto(server.url)
            page.get_by_role("button", name="Start the default experiment").click()
            page.get_by_text(re.compile(r"Started run r\w+")).first.wait_for(timeout=60000)
            _shot(page, "walk_1_home_started")
            store = open_store(server.workspace)
            rid = str(store.list_runs()["id"].iloc[0])

            page.goto(server.url + "/Live")
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60000)
            seen, deadline = set(), time.monotonic() + 300
            while time.monotonic() < deadline and len(seen) < 2:
                step = _live_step(page)
                if step > 0:
                    seen.add(step)
                time.sleep(1.0)
            assert len(seen) >= 2, f"the live view never advanced: saw steps {sorted(seen)}"
            _shot(page, "walk_2_live")
            page.get_by_text("status: done").first.wait_for(timeout=900000)  # two while a rerun swaps it
            info = store.get_run(rid)
            assert info.status == "done", info.error
            val_acc = info.result["metrics"]["acc/val"]
            page.reload()  # the finished run's charts, drawn once more without the refresh
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60000)
            wait_app_idle(page, 60000)
            _shot(page, "walk_3_live_done")

            page.goto(server.url + "/Explore")
            page.get_by_text("What if the threshold were different?").first.wait_for(timeout=60000)
            shown = _metric(page, "accuracy (val subset)")
            wait_app_idle(page, 120000)
            _shot(page, "walk_4_explore")
            assert abs(float(shown.rstrip("%")) - 100 * val_acc) <= 1.0, (shown, val_acc)

            page.goto(server.url + "/Model")
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60000)
            wait_app_idle(page, 60000)
            _shot(page, "walk_5_model")
            assert page.locator("[data-testid='stException']").count() == 0

            page.goto(server.url + "/Collapse")
            page.get_by_role("button", name="Collapse").click()
            page.get_by_text(re.compile(r"Collapsed in")).first.wait_for(timeout=300000)
            button = page.get_by_role("button", name=re.compile("Download slim model"))
            button.wait_for(timeout=60000)
            _shot(page, "walk_6_collapse")
            with page.expect_download(timeout=60000) as got:
                button.click()
            archive = tmp_path / "slim.zip"
            got.value.save_as(archive)

            page.goto(server.url + "/Model")
            page.get_by_role("tab", name="After collapse").click()
            page.get_by_text(re.compile(r"Collapse of step \d+")).first.wait_for(timeout=60000)
            _shot(page, "walk_7_model_collapsed")
        finally:
            browser.close()

    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "slim")
    [path] = [f for f in (tmp_path / "slim").rglob("*") if f.is_file()]
    slim = pk.load_slim(path).eval()
    result = store.collapse_results(rid)[-1]
    assert sum(t.numel() for t in slim.parameters()) == result["slim"]["params"]
    with torch.no_grad():
        out = slim(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
