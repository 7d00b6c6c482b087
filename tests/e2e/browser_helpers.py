"""Small helpers shared by the browser tests."""

from __future__ import annotations

from typing import Any

# How long a browser test waits for an event (an element, a text, a page) before it fails.
# Generous on purpose: a test waits for the event, never for a clock, so on a quiet machine
# it goes on as soon as the page is ready, and on a loaded one (load 5-9, a model loading
# in the same process) it still passes. Playwright's own defaults, 5 s for expect() and
# 30 s for actions, were exceeded on a busy machine.
EVENT_TIMEOUT_MS = 120_000


def new_context(browser: Any, **options: Any) -> Any:
    """``browser.new_context(**options)`` whose actions and navigations wait up to
    :data:`EVENT_TIMEOUT_MS` for their element or page."""
    context = browser.new_context(**options)
    context.set_default_timeout(EVENT_TIMEOUT_MS)
    context.set_default_navigation_timeout(EVENT_TIMEOUT_MS)
    return context


def open_tab(page: Any, name: str) -> None:
    """Click the page's tab ``name``, through Gradio's overflow menu when the tab bar is
    too narrow for every tab and the last ones are folded into it."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if not tab.is_visible():
        page.locator("#tabs .overflow-menu button, #tabs button.overflow-menu").first.click()
        tab = page.locator(".overflow-dropdown button", has_text=name).first
    tab.click()


# Gradio's status trackers ("wrap <variant> <show_progress>") of events still running; a
# finished event's trackers carry "hide" (checked against gradio 6.31's statustracker)
RUNNING_EVENTS = ".wrap.full:not(.hide), .wrap.minimal:not(.hide)"


def wait_until_idle(page: Any) -> None:
    """Wait until no event of the page is running (its outputs and its session state have
    landed): the event itself, never a fixed time."""
    from playwright.sync_api import expect

    expect(page.locator(RUNNING_EVENTS)).to_have_count(0, timeout=EVENT_TIMEOUT_MS)
