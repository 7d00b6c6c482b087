"""Proves the browser harness: a tiny Gradio app, driven by headless Chromium."""

from __future__ import annotations

import pytest

gr = pytest.importorskip("gradio", reason="gradio not installed: pip install -e '.[app]'")


def _make_demo() -> gr.Blocks:
    def shout(text: str) -> str:
        return f"{text.upper()}!"

    with gr.Blocks(title="tokentrail harness") as demo:
        inp = gr.Textbox(label="Input", elem_id="inp")
        btn = gr.Button("Shout", elem_id="btn")
        out = gr.Textbox(label="Output", elem_id="out", interactive=False)
        btn.click(shout, inp, out, api_name="shout")
    return demo


@pytest.mark.browser
def test_fill_click_read_back(page, serve_blocks, artifacts_dir):
    with serve_blocks(_make_demo()) as url:
        assert url.startswith("http://127.0.0.1:")
        page.goto(url)
        page.locator("#inp textarea").fill("time flies")
        page.locator("#btn").click()
        out = page.locator("#out textarea")
        # expect() retries until the event round-trip has updated the output
        from playwright.sync_api import expect

        expect(out).to_have_value("TIME FLIES!")
        shot = artifacts_dir / "harness.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 1000


def test_serve_blocks_closes_server(serve_blocks):
    """No browser needed: the app answers while served and is gone afterwards."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    demo = _make_demo()
    with serve_blocks(demo) as url, opener.open(url + "config", timeout=60) as resp:  # 60 s: a safety net under load
        assert resp.status == 200
    assert not demo.is_running
    with pytest.raises((urllib.error.URLError, OSError)):
        opener.open(url + "config", timeout=2)
