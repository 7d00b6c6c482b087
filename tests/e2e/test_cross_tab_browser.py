"""The Cross-attention tab in headless Chromium, on a tiny BART and a tiny T5 saved with
``save_pretrained``: the stack selector, the decoder token's nearest source tokens and
the cross-attention map, as a person sees them (screenshots in artifacts/)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="gradio not installed: pip install -e '.[app]'")
pw = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install -e '.[test]'")
expect = pw.expect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/seq2seq_models.py
import seq2seq_models as sm  # noqa: E402
from browser_helpers import open_tab  # noqa: E402
from tokentrail.app import build_app, launch_options  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]
SLOW = 60_000


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_cross_attention_view(family, tmp_path, page, serve_blocks, artifacts_dir):
    folder = tmp_path / family
    getattr(sm, family)(folder)
    with serve_blocks(build_app(preload=[str(folder)]), **launch_options()) as url:
        page.set_viewport_size({"width": 1400, "height": 1000})
        page.goto(url)
        expect(page.locator("#status")).to_contain_text(family, timeout=SLOW)
        page.locator("#text textarea").fill("the cat sat on the mat")
        page.locator("#text textarea").press("Enter")
        expect(page.locator("#tokens")).to_contain_text("mat", timeout=SLOW)

        open_tab(page, "Cross-attn")
        expect(page.locator("#x-head input")).to_be_visible()  # the tab's last input: the whole row is drawn
        for box, value in (("#x-target", "le chat est sur le tapis"), ("#x-token", "chat")):
            page.locator(f"{box} textarea").fill(value)
            expect(page.locator(f"{box} textarea")).to_have_value(value)
        page.locator("#x-run").click()
        expect(page.locator("#x-status")).to_contain_text("decoder token", timeout=SLOW)
        expect(page.locator("#x-status")).to_contain_text("chat")
        expect(page.locator("#x-sources")).to_contain_text("source token")
        expect(page.locator("#x-sources")).to_contain_text("attention")
        expect(page.locator("#x-map")).to_contain_text("keys/values: encoder output")
        expect(page.locator("#x-grid")).to_contain_text("decoder stack")
        expect(page.locator("#x-step")).to_contain_text("Matches the model's own numbers")
        page.mouse.move(0, 0)
        page.locator("#tab-cross").screenshot(path=str(artifacts_dir / f"app-cross-{family}.png"))

        page.get_by_text("encoder", exact=True).first.click()
        page.locator("#x-run").click()
        expect(page.locator("#x-grid")).to_contain_text("encoder stack", timeout=SLOW)
