"""The page for everyone (issue 24), in headless Chromium: contrast (WCAG AA) on every tab in
light and dark mode, every tab reachable at 1280x720, the keyboard, a phone's layout, and
an empty state instead of an empty frame. Screenshots go to artifacts/ (copied to
docs/images/, which docs/app.md shows)."""

from __future__ import annotations

import json
import re

import pytest

gr = pytest.importorskip("gradio", reason="gradio not installed: pip install -e '.[app]'")
pw = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install -e '.[test]'")
expect = pw.expect

from a11y_checks import CONTRAST_JS, FIGURE_BACKGROUNDS_JS, FOCUSED_JS, luminance  # noqa: E402
from browser_helpers import EVENT_TIMEOUT_MS, new_context, open_tab, wait_until_idle  # noqa: E402
from tokentrail.app import build_app, launch_options  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SLOW = EVENT_TIMEOUT_MS  # ms: a first analysis loads the model
LAPTOP = {"width": 1280, "height": 720}
PHONE = {"width": 390, "height": 844}

# the page's tab names, read from its tab strip and (where tabs fold) Gradio's overflow menu
TAB_NAMES_JS = """async () => {
  const names = [...document.querySelectorAll('#tabs [role=tab]')].map((b) => b.textContent.trim());
  const more = document.querySelector('#tabs .overflow-menu button, #tabs button.overflow-menu');
  if (more) {
    more.click();
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    for (const b of document.querySelectorAll('.overflow-dropdown button')) names.push(b.textContent.trim());
    more.click();
  }
  return [...new Set(names.filter(Boolean))];
}"""

# every plot on screen has drawn (its first svg is there and laid out)
PLOTS_DRAWN_JS = """() => [...document.querySelectorAll('.js-plotly-plot')].every(
  (p) => p.getBoundingClientRect().width === 0 || p.querySelector('.main-svg') !== null)"""


# no block is dimmed: Gradio fades an output while its event runs (opacity), and back
# nor fading back in: no opacity transition still running anywhere (a block reads 1 before its
# content's own fade ends; a run measured mid-fade reads as low contrast)
SETTLED_JS = """() => [...document.querySelectorAll('.block')].every((b) => getComputedStyle(b).opacity === '1')
  && !document.querySelector('.pending')
  && document.getAnimations().every((a) => a.playState !== 'running' || a.transitionProperty !== 'opacity')"""


def ready(page) -> None:
    expect(page.locator("#status")).to_contain_text("Selected:", timeout=SLOW)
    wait_until_idle(page)


def settled(page) -> None:
    """Every event has finished and its outputs are drawn at full opacity."""
    wait_until_idle(page)
    page.wait_for_function(SETTLED_JS)


def test_every_text_run_meets_wcag_aa_on_every_tab_in_light_and_dark_mode(browser, serve_blocks, artifacts_dir):
    """Each visible text run's contrast with what is behind it (colours from computed styles,
    ancestors' backgrounds composited) is at least 4.5:1 (large text 3:1), on every tab, in
    both colour schemes; in dark mode no figure keeps a light background."""
    failures: dict[str, list] = {}
    light_figures: list = []
    with serve_blocks(build_app(), **launch_options()) as url:
        for scheme in ("light", "dark"):
            ctx = new_context(browser, color_scheme=scheme, viewport=LAPTOP)
            try:
                page = ctx.new_page()
                page.goto(url + f"?__theme={scheme}")
                ready(page)
                names = page.evaluate(TAB_NAMES_JS)
                assert len(names) >= 10, names
                page.mouse.move(0, 0)
                page.screenshot(path=str(artifacts_dir / f"app-1280x720-{scheme}.png"))
                for name in names:
                    open_tab(page, name)
                    settled(page)
                    page.wait_for_function(PLOTS_DRAWN_JS)
                    page.mouse.move(0, 0)
                    for run in page.evaluate(CONTRAST_JS):
                        if run["ratio"] < run["need"]:
                            failures.setdefault(scheme, []).append({"tab": name, **run})
                    if scheme == "dark":
                        light_figures += [
                            (name, f) for f in page.evaluate(FIGURE_BACKGROUNDS_JS) if luminance(f["bg"]) > 0.2
                        ]
            finally:
                ctx.close()
    # one line per distinct failing run, so the message says what to fix
    lines = sorted(
        {
            f"{s}: {f['tab']} · {f['where']} · {f['text']!r} {f['ratio']}:1 ({f['fg']} on {f['bg']})"
            for s, fs in failures.items()
            for f in fs
        }
    )
    # distinct runs (a control shown beside every tab counts once)
    counts = {s: len({(f["where"], f["text"]) for f in fs}) for s, fs in failures.items()}
    (artifacts_dir / "contrast-failures.json").write_text(json.dumps(failures, indent=1))
    assert not failures, f"text runs below WCAG AA: {counts}\n" + "\n".join(lines[:80])
    assert not light_figures, f"figures with a light background in dark mode: {light_figures}"


def test_every_tab_shows_in_the_strip_at_1280x720(browser, serve_blocks):
    """No tab folds into Gradio's overflow menu ("⋯") on a laptop screen."""
    with serve_blocks(build_app(), **launch_options()) as url:
        ctx = new_context(browser, viewport=LAPTOP)
        try:
            page = ctx.new_page()
            page.goto(url)
            ready(page)
            tabs = page.locator("#tabs [role=tab]")
            expect(tabs.first).to_be_visible()
            names = tabs.all_inner_texts()
            assert len(names) >= 10, names
            for i in range(tabs.count()):
                expect(tabs.nth(i)).to_be_visible()
                box = tabs.nth(i).bounding_box()
                assert box["x"] + box["width"] <= LAPTOP["width"], names[i]
            expect(page.locator("#tabs .overflow-menu, #tabs button.overflow-menu")).to_be_hidden()
        finally:
            ctx.close()


def tab_stop(page) -> str:
    page.keyboard.press("Tab")
    return page.evaluate(FOCUSED_JS)


def test_keyboard_text_first_chips_one_stop_tab_strip_and_heatmap_arrows(browser, serve_blocks):
    """The text box is within the first 3 Tab stops; the 14 chips are one Tab stop whose
    arrow keys move (quick presses keep the last selection); the tab strip's arrow keys
    open the next tab; heatmap cells take focus, arrows move, Enter selects; Tab out of
    the Correction box keeps the focus on the page."""
    with serve_blocks(build_app(), **launch_options()) as url:
        ctx = new_context(browser, viewport=LAPTOP)
        try:
            page = ctx.new_page()
            page.goto(url)
            ready(page)
            page.locator("#header").click()  # the focus starts at the top of the page
            stops = [tab_stop(page) for _ in range(3)]
            assert "textarea#text" in stops, stops

            # the chips: one Tab stop
            expect(page.locator("#tokens input[type=radio]")).to_have_count(14)
            page.locator("#tokens input:checked").focus()
            assert page.locator("#tokens input[tabindex='0']").count() == 1
            after = tab_stop(page)
            assert "#tokens" not in after, after
            page.keyboard.press("Shift+Tab")
            assert page.evaluate(FOCUSED_JS) == "input#tokens"
            # three quick presses: time (1) -> an (4), and the selection stays there
            for _ in range(3):
                page.keyboard.press("ArrowRight")
            expect(page.locator("#status")).to_contain_text("Selected: an (token 4)")
            wait_until_idle(page)
            expect(page.locator("#status")).to_contain_text("Selected: an (token 4)")
            expect(page.locator("#tokens label.selected")).to_have_text(re.compile(r"^\s*an\s*$"))

            # the tab strip: the arrow keys open the next and previous tab
            page.locator("#tabs [role=tab][aria-selected=true]").focus()
            page.keyboard.press("ArrowRight")
            expect(page.locator("#tabs [role=tab][aria-selected=true]")).to_have_text("Heatmap")
            # heatmap cells: the selected cell is the grid's one Tab stop
            cell = page.locator('#heat td[tabindex="0"]')
            expect(cell).to_have_attribute("data-t", "4")
            cell.focus()
            page.keyboard.press("ArrowDown")
            page.keyboard.press("ArrowRight")
            assert page.evaluate("document.activeElement.dataset.t + ',' + document.activeElement.dataset.l") == "5,1"
            page.keyboard.press("Enter")
            expect(page.locator("#status")).to_contain_text("Selected: arrow (token 5) · layer 1")
            expect(page.locator('#heat td.sel[data-t="5"][data-l="1"]')).to_be_focused()
            page.keyboard.press("ArrowLeft")
            page.locator("#tabs [role=tab][aria-selected=true]").focus()
            page.keyboard.press("ArrowLeft")
            expect(page.locator("#tabs [role=tab][aria-selected=true]")).to_have_text("Layers")

            # Tab out of the Correction box: the focus goes on, not to <body>
            page.locator("#correct input").focus()
            page.keyboard.press("Tab")
            wait_until_idle(page)
            assert page.evaluate(FOCUSED_JS) != "BODY"
        finally:
            ctx.close()


def test_empty_states_say_what_to_do(browser, serve_blocks):
    """No empty table or blank plot frame: the lens on a model without a head, Compare
    before pressing, Cross-attention on an encoder-only model and Study without studies
    each say what to do; Compare's tokens follow the text."""
    with serve_blocks(build_app(), **launch_options()) as url:
        ctx = new_context(browser, viewport=LAPTOP)
        try:
            page = ctx.new_page()
            page.goto(url)
            ready(page)
            open_tab(page, "Lens")
            expect(page.locator("#lens-note")).to_contain_text("No logit lens for minilm")
            expect(page.locator("#lens-note")).to_contain_text("choose a model with an output head")
            expect(page.locator("#lens-table")).to_be_hidden()

            open_tab(page, "Compare")
            expect(page.locator("#cmp-status")).to_contain_text("press Compare")
            for pid in ("cmp-table", "cmp-plot", "cmp-lines", "cmp-heat"):
                expect(page.locator(f"#{pid}")).to_be_hidden()
            expect(page.locator("#cmp-token-a textarea, #cmp-token-a input").first).to_have_value("flies:0")
            # a text without "flies": the tokens follow it
            page.locator("#text textarea").fill("I sat on a bank by one river bank.")
            page.locator("#text textarea").press("Enter")
            expect(page.locator("#cmp-token-a textarea, #cmp-token-a input").first).to_have_value("bank:0")
            expect(page.locator("#cmp-token-b textarea, #cmp-token-b input").first).to_have_value("bank:1")
            page.locator("#text textarea").fill("A cat sat.")
            page.locator("#text textarea").press("Enter")
            expect(page.locator("#cmp-token-a textarea, #cmp-token-a input").first).to_have_value("")
            wait_until_idle(page)

            open_tab(page, "Cross-attn")
            expect(page.locator("#x-status")).to_contain_text("choose one in Model")
            page.locator("#x-run").click()
            expect(page.locator("#x-status")).to_contain_text("has one stack")
            for pid in ("x-grid", "x-sources", "x-map"):
                expect(page.locator(f"#{pid}")).to_be_hidden()

            open_tab(page, "Study")
            expect(page.locator("#study-status")).to_contain_text("tokentrail serve --studies DIR")
            for pid in ("study-self-sim", "study-rank", "study-anisotropy", "study-jumps", "study-meta"):
                expect(page.locator(f"#{pid}")).to_be_hidden()
            open_tab(page, "Export")
            expect(page.locator("#file")).to_be_hidden()
        finally:
            ctx.close()


def test_phone_shows_the_text_and_the_result_before_the_controls(browser, serve_blocks, artifacts_dir):
    with serve_blocks(build_app(), **launch_options()) as url:
        ctx = new_context(browser, viewport=PHONE, is_mobile=True, has_touch=True)
        try:
            page = ctx.new_page()
            page.goto(url)
            ready(page)
            top = {sel: page.locator(sel).bounding_box()["y"] for sel in ("#text", "#status", "#tabs", "#controls")}
            assert top["#text"] < top["#status"] < top["#tabs"] < top["#controls"], top
            assert top["#text"] + page.locator("#text").bounding_box()["height"] <= PHONE["height"]
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + 1
            page.screenshot(path=str(artifacts_dir / "app-phone.png"))
        finally:
            ctx.close()


def test_map_points_are_reached_from_the_keyboard_through_their_table(browser, serve_blocks):
    """A plotly point takes no focus: the map's points table does, and moving through it
    with the arrow keys selects each row's token and layer in the whole page."""
    with serve_blocks(build_app(), **launch_options()) as url:
        ctx = new_context(browser, viewport=LAPTOP)
        try:
            page = ctx.new_page()
            page.goto(url)
            ready(page)
            open_tab(page, "Map")
            expect(page.locator("#map-status")).to_contain_text("points: paths")
            page.get_by_text("The points as a table").click()
            first = page.locator("#map-points [role=gridcell]").first
            expect(first).to_be_visible()
            first.click()  # the encoding of [CLS]: token 0, no layer
            expect(page.locator("#status")).to_contain_text("Selected: [CLS] (token 0)")
            page.keyboard.press("ArrowDown")  # the next row: [CLS] at layer 0
            page.keyboard.press("ArrowDown")  # [CLS] at layer 1
            expect(page.locator("#status")).to_contain_text("Selected: [CLS] (token 0) · layer 1")
        finally:
            ctx.close()
