"""The page for everyone (issue 24), in headless Chromium: contrast (WCAG AA) on every tab in
light and dark mode, every tab reachable at 1280x720, the keyboard, a phone's layout, and
an empty state instead of an empty frame. Screenshots go to artifacts/ (copied to
docs/images/, which docs/app.md shows)."""

from __future__ import annotations

import json

import pytest

gr = pytest.importorskip("gradio", reason="gradio not installed: pip install -e '.[app]'")
pw = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install -e '.[test]'")
expect = pw.expect

from a11y_checks import CONTRAST_JS, FIGURE_BACKGROUNDS_JS, luminance  # noqa: E402
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


def ready(page) -> None:
    expect(page.locator("#status")).to_contain_text("Selected:", timeout=SLOW)
    wait_until_idle(page)


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
                for name in names:
                    open_tab(page, name)
                    wait_until_idle(page)
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
