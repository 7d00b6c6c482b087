"""The tokentrail page in headless Chromium: type, click, read what a person would see."""

from __future__ import annotations

import re

import pytest

gr = pytest.importorskip("gradio", reason="gradio not installed: pip install -e '.[app]'")
pw = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install -e '.[test]'")
expect = pw.expect

import tokentrail as tt  # noqa: E402
from browser_helpers import EVENT_TIMEOUT_MS, new_context, open_tab, wait_until_idle  # noqa: E402
from tokentrail.app import build_app, launch_options  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TEXT = "The old cat sat by the river bank and watched the boats."
SLOW = EVENT_TIMEOUT_MS  # ms: a first analysis loads the model


def chip(page, token: str):
    return page.locator("#tokens label", has_text=re.compile(rf"^\s*{re.escape(token)}\s*$")).first


def analysed(page, model: str, text_part: str | None = None):
    expect(page.locator("#status")).to_contain_text(model, timeout=SLOW)
    if text_part:
        expect(page.locator("#tokens")).to_contain_text(text_part, timeout=SLOW)


def test_type_click_and_read_every_view(page, serve_blocks, artifacts_dir):
    with serve_blocks(build_app(), **launch_options()) as url:
        page.goto(url)
        analysed(page, "minilm", "banana")  # the initial text is analysed on load

        page.locator("#text textarea").fill(TEXT)
        page.locator("#text textarea").press("Enter")
        analysed(page, "minilm", "river")
        expect(page.locator("#status")).to_contain_text("15 tokens")

        chip(page, "river").click()
        expect(page.locator("#status")).to_contain_text("Selected: river (token 7)")
        expect(chip(page, "river")).to_have_class(re.compile(r"\bselected\b"))

        # the table: one column per layer, the token itself starred
        table = page.locator("#table")
        expect(table).to_contain_text("layer 5")
        expect(table).to_contain_text("★ river")
        # three plots, drawn by plotly in the page, the selected token among the lines
        for pid, title in (
            ("plot-sim", "Similarity to the original encoding"),
            ("plot-rank", "Rank of its own token"),
            ("plot-overlap", "Top-k overlap"),
        ):
            plot = page.locator(f"#{pid}")
            expect(plot.locator(".main-svg").first).to_be_visible()
            expect(plot).to_contain_text(title)
            assert plot.locator("path.js-line").count() >= 2
        page.mouse.move(0, 0)
        page.screenshot(path=str(artifacts_dir / "app.png"), full_page=True)

        # the per-head view: a heads x top-k table and each head's attention
        open_tab(page, "Heads")
        heads = page.locator("#heads")
        expect(heads).to_contain_text("head 11")
        expect(heads).to_contain_text("own rank")
        expect(page.locator("#plot-attention")).to_contain_text("Attention of 'river' at layer 0")
        expect(page.locator("#plot-attention .heatmaplayer, #plot-attention image").first).to_be_attached()
        page.screenshot(path=str(artifacts_dir / "app-heads.png"), full_page=True)

        # the walkthrough, with a check against the model's own numbers
        open_tab(page, "Steps")
        expect(page.locator("#walk")).to_contain_text("Matches the model's own numbers")
        expect(page.locator("#walk-sources")).to_contain_text("softmax w")

        # the heatmap: clicking a cell selects that token and layer
        open_tab(page, "Heatmap")
        cell = page.locator('#heat td[data-t="3"][data-l="4"]')
        expect(cell).to_be_visible()
        cell.click()
        expect(page.locator("#status")).to_contain_text("Selected: cat (token 3) · layer 4")
        expect(page.locator('#heat td.sel[data-t="3"][data-l="4"]')).to_be_visible()
        expect(chip(page, "cat")).to_have_class(re.compile(r"\bselected\b"))
        page.screenshot(path=str(artifacts_dir / "app-heatmap.png"), full_page=True)


def test_empty_text_shows_a_message_and_the_page_keeps_working(page, serve_blocks):
    with serve_blocks(build_app(), **launch_options()) as url:
        page.goto(url)
        analysed(page, "minilm", "banana")
        page.locator("#text textarea").fill("   ")
        page.locator("#analyse").click()
        expect(page.locator("#status")).to_contain_text("Problem: the text is empty")
        page.locator("#text textarea").fill("Fruit flies like a banana.")
        page.locator("#analyse").click()
        expect(page.locator("#status")).to_contain_text("8 tokens")


@pytest.fixture(scope="module")
def second_model(tmp_path_factory) -> tuple[str, str, list[str]]:
    """(menu label, token shown for 'flies', extra models for build_app): the bundled
    SmolLM2 when it loads here, else a tiny random RoBERTa the test allow-lists."""
    try:
        tt.load("smollm2")
        return "smollm2", "␣flies", []
    except tt.TokentrailError:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from test_app import save_tiny_models

        folder = save_tiny_models(tmp_path_factory.mktemp("models"))["tiny-roberta"]
        return "tiny-roberta (local folder)", "␣flies", [str(folder)]


def test_two_sessions_with_different_models(browser, serve_blocks, second_model, artifacts_dir):
    label, flies, extra = second_model
    with serve_blocks(build_app(models=extra), **launch_options()) as url:
        ctx_a, ctx_b = (new_context(browser, viewport={"width": 1280, "height": 900}) for _ in range(2))
        try:
            a, b = ctx_a.new_page(), ctx_b.new_page()
            for p in (a, b):
                p.set_default_timeout(SLOW)
                p.goto(url)
                analysed(p, "minilm", "banana")

            b.locator("#model input").click()
            b.get_by_role("option", name=label).click()
            analysed(b, label.split(" ")[0], flies)
            decoder = label == "smollm2"
            if decoder:
                expect(b.locator("#causal")).to_be_visible()
                expect(b.locator("#status")).to_contain_text("causal mask on")
            chip(b, flies).click()
            expect(b.locator("#status")).to_contain_text(f"Selected: {flies}")

            # page A was not touched: still MiniLM's tokens, and its clicks still work
            expect(a.locator("#status")).to_contain_text("minilm")
            expect(a.locator("#causal")).to_be_hidden()
            chip(a, "banana").click()
            expect(a.locator("#status")).to_contain_text("Selected: banana")
            expect(a.locator("#status")).to_contain_text("minilm")
            expect(a.locator("#table")).to_contain_text("★ banana")
            expect(chip(a, "[CLS]")).to_be_visible()

            # and B still shows its own model after A's clicks
            expect(b.locator("#status")).to_contain_text(label.split(" ")[0])
            expect(b.locator("#tokens")).not_to_contain_text("[CLS]")
            if decoder:  # the toggle reaches the analysis, and the result says which mode
                b.locator("#causal input").uncheck()
                expect(b.locator("#status")).to_contain_text("causal mask off", timeout=SLOW)
            b.screenshot(path=str(artifacts_dir / "app-second-model.png"), full_page=True)
        finally:
            ctx_a.close()
            ctx_b.close()


CONTRAST_JS = """(el) => {
  const rgb = (s) => { const m = s.match(/[\\d.]+/g).map(Number); return m.length > 3 ? m : [...m, 1]; };
  let bg = null;
  for (let n = el; n; n = n.parentElement) {
    const c = rgb(getComputedStyle(n).backgroundColor);
    if (c[3] > 0.5) { bg = c; break; }
  }
  bg = bg || [255, 255, 255, 1];
  const fg = rgb(getComputedStyle(el).color);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""


def test_both_themes_read_and_chips_work_from_the_keyboard(browser, serve_blocks, artifacts_dir):
    """Dark mode (the OS setting) keeps text readable (WCAG contrast >= 4.5 for the status
    line, the chips and the help panels); Tab reaches the chips and the arrow keys select."""
    with serve_blocks(build_app(), **launch_options()) as url:
        for scheme in ("light", "dark"):
            ctx = new_context(browser, color_scheme=scheme, viewport={"width": 1280, "height": 720})
            page = ctx.new_page()
            try:
                page.goto(url)
                analysed(page, "minilm", "banana")
                assert page.evaluate("document.body.classList.contains('dark')") == (scheme == "dark")
                # the help panels are folded: open the first one (its text is drawn only then)
                page.locator(".howto").first.get_by_text("How to read this").click()
                expect(page.locator(".howto p").first).to_be_visible()
                for sel in ("#status p", "#tokens label:not(.selected) span", ".howto p"):
                    ratio = page.locator(sel).first.evaluate(CONTRAST_JS)
                    assert ratio >= 4.5, (scheme, sel, ratio)
                page.screenshot(path=str(artifacts_dir / f"app-{scheme}.png"))
                # keyboard: the selected chip takes focus, the right arrow moves to the next token.
                # Let the page's load event finish first (its session state can land a moment
                # after its outputs show, on a loaded machine; a click then would find none):
                # wait until none of the page's events is running, not for a fixed time
                wait_until_idle(page)
                page.locator("#tokens input:checked").focus()
                assert page.evaluate("document.activeElement.closest('#tokens') !== null")
                page.keyboard.press("ArrowRight")
                expect(page.locator("#status")).to_contain_text("Selected: flies (token 2)")
                expect(chip(page, "flies")).to_have_class(re.compile(r"\bselected\b"))
                page.keyboard.press("End")
                expect(page.locator("#status")).to_contain_text("Selected: [SEP] (token 13)")
                page.keyboard.press("ArrowLeft")
                expect(page.locator("#status")).to_contain_text("Selected: . (token 12)")
            finally:
                ctx.close()


def test_compare_tab_two_tokens_then_two_contexts(page, serve_blocks, artifacts_dir):
    with serve_blocks(build_app(), **launch_options()) as url:
        page.set_default_timeout(SLOW)
        page.goto(url)
        analysed(page, "minilm", "banana")
        open_tab(page, "Compare")
        # the defaults: the two "flies" of the initial text
        page.locator("#cmp-run").click()
        status = page.locator("#cmp-status")
        expect(status).to_contain_text("They diverge most at layer 2", timeout=SLOW)
        expect(status).to_contain_text("token 2 flies")
        expect(status).to_contain_text("token 8 flies")
        table = page.locator("#cmp-table")
        expect(table).to_contain_text("only in b")
        expect(table).to_contain_text("snails")  # the noun's own neighbours (docs/compare.md)
        for pid in ("cmp-plot", "cmp-lines", "cmp-heat"):
            expect(page.locator(f"#{pid} .main-svg").first).to_be_visible()
        expect(page.locator("#cmp-plot")).to_contain_text("lowest at layer 2")
        page.mouse.move(0, 0)
        page.screenshot(path=str(artifacts_dir / "app-compare.png"), full_page=True)

        # an absent token: a message, and the tab keeps working
        page.locator("#cmp-token-a textarea, #cmp-token-a input").first.fill("zebra")
        page.locator("#cmp-run").click()
        expect(status).to_contain_text("no token 'zebra' in the text")

        # one word in two contexts
        page.locator("#text textarea").fill("I sat on the river bank.")
        page.locator("#cmp-text-b textarea, #cmp-text-b input").first.fill("I paid at the bank.")
        page.locator("#cmp-token-a textarea, #cmp-token-a input").first.fill("bank")
        page.locator("#cmp-token-b textarea, #cmp-token-b input").first.fill("")
        page.locator("#cmp-run").click()
        expect(status).to_contain_text("They diverge most at layer 5")
        expect(table).to_contain_text("cash")


def click_point(page, point) -> None:
    """A real mouse click on a plotly point (plotly hit-tests the pointer on its drag layer,
    so the point element itself never receives the click), once the page's listener is on
    the redrawn plot (map_tab.PICK_JS polls for it: a person is slower than the poll)."""
    page.wait_for_function(
        "() => { const gd = document.querySelector('#map-plot .js-plotly-plot');"
        " return gd && gd._ev && gd.__ttPick === gd._ev; }"
    )
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def test_map_tab_draws_the_paths_and_a_click_selects_a_token_and_layer(page, serve_blocks, artifacts_dir):
    with serve_blocks(build_app(), **launch_options()) as url:
        page.set_default_timeout(SLOW)
        page.goto(url)
        analysed(page, "minilm", "banana")
        expect(page.locator("#status")).to_contain_text("Selected: time (token 1) · layer 0")
        open_tab(page, "Map")
        status = page.locator("#map-status")
        expect(status).to_contain_text("points: paths at attn_resid, PCA (exact)")
        plot = page.locator("#map-plot")
        expect(plot).to_contain_text("Token paths through minilm")
        traces = plot.locator(".scatterlayer .trace")
        expect(traces).to_have_count(1 + 14)  # the grey neighbours, then one path per token
        page.mouse.move(0, 0)
        page.screenshot(path=str(artifacts_dir / "app-map.png"), full_page=True)

        # only the second "flies": its path, and a click on its last point (layer 5)
        page.locator("#map-tokens input, #map-tokens textarea").first.fill("flies:1")
        page.locator("#map-draw").click()
        expect(traces).to_have_count(2)
        click_point(page, traces.nth(1).locator("path.point").last)
        expect(page.locator("#status")).to_contain_text("Selected: flies (token 8) · layer 5")
        expect(chip(page, "flies").nth(0)).to_be_visible()

        # the second mode: queries and keys of the head chosen above
        chip(page, "time").click()
        expect(page.locator("#status")).to_contain_text("Selected: time (token 1) · layer 5")
        page.locator("#map-tokens input, #map-tokens textarea").first.fill("")
        page.get_by_label("queries and keys of one head").check()
        expect(status).to_contain_text("28 points: queries and keys of layer 5, head 0")
        expect(plot).to_contain_text("Queries and keys of minilm's layer 5, head 0")
        click_point(page, traces.nth(0).locator("path.point").nth(8))  # the query of token 8
        expect(page.locator("#status")).to_contain_text("Selected: flies (token 8) · layer 5")
        page.screenshot(path=str(artifacts_dir / "app-map-heads.png"), full_page=True)


STUDY_TEXTS = [
    "The old cat sat by the river bank and watched the boats.",
    "Time flies like an arrow; fruit flies like a banana.",
    "She said that they would come back after the rain had stopped.",
    "A small boat drifted slowly towards the harbour at night.",
    "We have not seen him since the meeting in March.",
    "Those who know the answer should raise their hands.",
]


def test_study_tab_opens_a_study_from_the_operators_folder(page, serve_blocks, artifacts_dir, tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tt.study(STUDY_TEXTS, "minilm", tmp_path / "minilm-sample", batch=3, sample=200)
    torch.set_num_threads(threads)
    with serve_blocks(build_app(studies=str(tmp_path)), **launch_options()) as url:
        page.set_default_timeout(SLOW)
        page.goto(url)
        analysed(page, "minilm", "banana")
        open_tab(page, "Study")  # the last tabs fold into Gradio's overflow menu on narrow pages
        expect(page.locator("#study-name input")).to_have_value("minilm-sample")  # offered from the folder, not typed
        page.locator("#study-open").click()
        status = page.locator("#study-status")
        expect(status).to_contain_text("minilm-sample")
        expect(status).to_contain_text("6 texts")
        for pid, title in (
            ("study-self-sim", "Self-similarity"),
            ("study-rank", "Rank of the token"),
            ("study-anisotropy", "Corpus anisotropy"),
            ("study-jumps", "Change of self-similarity"),
        ):
            plot = page.locator(f"#{pid}")
            expect(plot.locator(".main-svg").first).to_be_visible()
            expect(plot).to_contain_text(title)
        expect(page.locator("#study-self-sim")).to_contain_text("function")
        meta = page.locator("#study-meta")
        expect(meta).to_contain_text("rank by count in this corpus")
        expect(meta).to_contain_text("complete")
        page.mouse.move(0, 0)
        page.screenshot(path=str(artifacts_dir / "app-study.png"), full_page=True)
