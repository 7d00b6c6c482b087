"""Small helpers shared by the browser tests."""

from __future__ import annotations

from typing import Any


def open_tab(page: Any, name: str) -> None:
    """Click the page's tab ``name``, through Gradio's overflow menu when the tab bar is
    too narrow for every tab and the last ones are folded into it."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if not tab.is_visible():
        page.locator("#tabs .overflow-menu button, #tabs button.overflow-menu").first.click()
        tab = page.locator(".overflow-dropdown button", has_text=name).first
    tab.click()
