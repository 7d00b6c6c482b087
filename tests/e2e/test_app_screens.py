"""The page on small and wide screens (issue 11, point 5), in headless Chromium.

- 1280×720 (a laptop): a result (the table's header and first rows) is on the first
  screen, without scrolling, and no plot title (two plots abreast) runs past its plot.
- 1024×768: no table cell or header is cut (ellipsised) and no plot title runs past its
  plot.
- 1400×900 with SmolLM2 (30 layers): every layer's column is in the table (the last one
  can be scrolled to) and the heads table's headers are whole.

Screenshots go to artifacts/ (copied by hand to docs/images/, which docs/app.md shows):
a test run leaves the tracked tree as it was.
"""

from __future__ import annotations

import pytest

gr = pytest.importorskip("gradio", reason="gradio not installed: pip install -e '.[app]'")
pw = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install -e '.[test]'")
expect = pw.expect

import tokentrail as tt  # noqa: E402
from browser_helpers import EVENT_TIMEOUT_MS, new_context  # noqa: E402
from tokentrail.app import build_app, launch_options  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SLOW = EVENT_TIMEOUT_MS  # ms: a first analysis loads the model

# elements inside table cells whose text does not fit (ellipsised or clipped)
CUT_CELLS_JS = """(sel) => {
  const cut = [];
  for (const cell of document.querySelectorAll(sel)) {
    for (const e of [cell, ...cell.querySelectorAll('*')]) {
      const st = getComputedStyle(e);
      const clips = st.textOverflow === 'ellipsis' || st.overflowX === 'hidden' || st.overflow === 'hidden';
      if (clips && e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1) { cut.push(cell.textContent.trim()); break; }
    }
  }
  return cut;
}"""

# plotly titles (and subtitle lines) wider than their plot
CUT_TITLES_JS = """() => {
  const cut = [];
  for (const plot of document.querySelectorAll('.js-plotly-plot')) {
    const box = plot.querySelector('.main-svg').getBoundingClientRect();
    if (box.width === 0) continue;
    for (const t of plot.querySelectorAll('.g-gtitle text')) {
      const r = t.getBoundingClientRect();
      if (r.left < box.left - 1 || r.right > box.right + 1) cut.push(t.textContent);
    }
  }
  return cut;
}"""

# every plot on screen (a hidden tab's plots have no width) has drawn its title text
TITLES_DRAWN_JS = """() => [...document.querySelectorAll('.js-plotly-plot')].every((plot) => {
  const svg = plot.querySelector('.main-svg');
  return svg !== null && (svg.getBoundingClientRect().width === 0 || plot.querySelector('.g-gtitle text') !== null);
})"""

# Gradio's table: header cells, and the rows it draws (a virtual list of grid cells)
CELLS = "#{0} th[role=columnheader], #{0} [role=gridcell]"
RECT_JS = (
    "(e) => { const r = e.getBoundingClientRect();"
    " return {top: r.top, bottom: r.bottom, left: r.left, right: r.right}; }"
)


def _ready(page) -> None:
    expect(page.locator("#status")).to_contain_text("Selected:", timeout=SLOW)
    expect(page.locator("#table [role=row].virtual-row").first).to_be_visible(timeout=SLOW)
    # let plotly lay out the titles: wait until every plot on screen has drawn its title
    page.wait_for_function(TITLES_DRAWN_JS, timeout=SLOW)


def _in_viewport(page, locator) -> bool:
    r = locator.evaluate(RECT_JS)
    vw, vh = page.viewport_size["width"], page.viewport_size["height"]
    return r["top"] >= 0 and r["left"] >= 0 and r["bottom"] <= vh and r["right"] <= vw


@pytest.fixture
def app_url(serve_blocks):
    with serve_blocks(build_app(), **launch_options()) as url:
        yield url


def test_laptop_screen_shows_a_result_without_scrolling(browser, app_url, artifacts_dir):
    ctx = new_context(browser, viewport={"width": 1280, "height": 720})
    try:
        page = ctx.new_page()
        page.goto(app_url)
        _ready(page)
        assert page.evaluate("window.scrollY") == 0
        # the table's header row and its first three rows (own token, nearest neighbours)
        assert _in_viewport(page, page.locator("#table thead th").first)
        for i in range(3):
            for cell in page.locator("#table [role=row].virtual-row").nth(i).locator("[role=gridcell]").all()[:3]:
                assert _in_viewport(page, cell), f"table row {i} is not on the first screen"
        expect(page.locator("#table [role=row].virtual-row").first).to_contain_text("★ time")
        # the controls sit beside the results (on their right), not above them
        controls, results = (page.locator(s).evaluate(RECT_JS) for s in ("#controls", "#results"))
        assert results["right"] <= controls["left"] and controls["top"] < 200
        assert page.evaluate(CUT_CELLS_JS, CELLS.format("table")) == []
        assert page.evaluate(CUT_TITLES_JS) == []
        page.mouse.move(0, 0)
        page.screenshot(path=str(artifacts_dir / "app-1280x720.png"))
    finally:
        ctx.close()


def test_1024_wide_cuts_no_cell_and_no_plot_title(browser, app_url, artifacts_dir):
    ctx = new_context(browser, viewport={"width": 1024, "height": 768})
    try:
        page = ctx.new_page()
        page.goto(app_url)
        _ready(page)
        assert _in_viewport(page, page.locator("#table [role=row].virtual-row").first.locator("[role=gridcell]").first)
        assert page.evaluate(CUT_CELLS_JS, CELLS.format("table")) == []
        page.locator("#plot-overlap").scroll_into_view_if_needed()
        for pid in ("plot-sim", "plot-rank", "plot-overlap"):
            expect(page.locator(f"#{pid} .g-gtitle text").first).to_be_visible()
        assert page.evaluate(CUT_TITLES_JS) == []
        # each plot is wide enough for its title: side by side only where they fit
        widths = [page.locator(f"#{pid} .main-svg").first.evaluate(RECT_JS) for pid in ("plot-sim", "plot-rank")]
        assert all(w["right"] - w["left"] >= 380 for w in widths)
        page.get_by_role("tab", name="Heads").click()
        expect(page.locator("#heads")).to_contain_text("own rank")
        assert page.evaluate(CUT_CELLS_JS, CELLS.format("heads")) == []
        page.get_by_role("tab", name="Layers").click()
        page.evaluate("window.scrollTo(0, 0)")
        page.mouse.move(0, 0)
        page.screenshot(path=str(artifacts_dir / "app-1024x768.png"))
    finally:
        ctx.close()


def test_wide_screen_shows_every_layer_of_a_deep_model_and_whole_head_headers(browser, serve_blocks, artifacts_dir):
    try:
        tt.load("smollm2")
    except tt.TokentrailError as exc:
        pytest.skip(f"SmolLM2 cannot be loaded here: {exc}")
    with serve_blocks(build_app(preload=["smollm2"]), **launch_options()) as url:
        ctx = new_context(browser, viewport={"width": 1400, "height": 900})
        try:
            page = ctx.new_page()
            page.goto(url)
            _ready(page)
            expect(page.locator("#status")).to_contain_text("30 layers")
            headers = page.locator("#table th[role=columnheader]").all_inner_texts()
            assert [h.split()[1] for h in headers if h.startswith("layer")] == [str(l) for l in range(30)]
            # the last layer's column can be scrolled to and is then inside the table
            last = page.locator("#table th[role=columnheader]", has_text="layer 29")
            last.scroll_into_view_if_needed()
            table, cell = page.locator("#table").evaluate(RECT_JS), last.evaluate(RECT_JS)
            assert table["left"] <= cell["left"] and cell["right"] <= table["right"] + 1
            assert page.evaluate(CUT_CELLS_JS, CELLS.format("table")) == []
            page.get_by_role("tab", name="Heads").click()
            expect(page.locator("#heads")).to_contain_text("own rank")
            assert page.evaluate(CUT_CELLS_JS, CELLS.format("heads")) == []
            page.mouse.move(0, 0)
            page.screenshot(path=str(artifacts_dir / "app-1400-smollm2-heads.png"))
        finally:
            ctx.close()
