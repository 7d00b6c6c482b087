"""Browser harness for end-to-end tests of Gradio apps.

Fixtures
--------
chromium_path   path of Debian's Chromium (/usr/bin/chromium, or $TT_CHROMIUM).
                Skips when it is missing -- except under CI=true, where it fails:
                `make test` installs it, so a missing browser there is a bug.
browser         session-scoped Playwright (sync API) Chromium, launched from
                chromium_path with the flags this closed-network machine needs.
page            a fresh browser context + page per test (closed afterwards).
serve_blocks    factory: ``with serve_blocks(demo) as url: ...`` launches a
                ``gr.Blocks`` on 127.0.0.1 on a free port (no share link,
                prevent_thread_lock=True), waits until it answers, closes it on exit.
artifacts_dir   <repo>/artifacts (created; gitignored) for screenshots.

Mark browser tests with ``@pytest.mark.browser``. Every wait is for an event (a text, an
element, a page), up to ``browser_helpers.EVENT_TIMEOUT_MS``; ``browser_helpers.new_context``
gives a context with those timeouts, for tests that open several pages or colour schemes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# browser_helpers by its path: tests/test_app.py loads this file as a plain module (not as
# a conftest), where tests/e2e is not on sys.path
_spec = importlib.util.spec_from_file_location("browser_helpers", Path(__file__).with_name("browser_helpers.py"))
browser_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser_helpers)
EVENT_TIMEOUT_MS = browser_helpers.EVENT_TIMEOUT_MS
new_context = browser_helpers.new_context

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr

# Keep Gradio from phoning home (analytics, version check) on a machine with no network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Loopback must never go through a proxy, should one be configured.
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
os.environ["no_proxy"] = os.environ["NO_PROXY"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHROMIUM = "/usr/bin/chromium"

# Without the background-networking flags Chromium keeps trying to reach Google's
# hosts, which this machine's closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

SERVER_START_TIMEOUT_S = 120.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = os.environ.get("TT_CHROMIUM", DEFAULT_CHROMIUM)
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    msg = (
        f"Chromium not found at {path}: install it with `bash scripts/setup.sh --browser` "
        "(Debian package 'chromium'), or point TT_CHROMIUM at a Chromium binary"
    )
    if _in_ci():
        pytest.fail(f"CI=true but {msg}", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install -e '.[test]'")
    # every expect(...) without its own timeout= (Playwright's default is 5 s)
    sync_api.expect.set_options(timeout=EVENT_TIMEOUT_MS)
    with sync_api.sync_playwright() as pw:
        # Playwright gives each launch a fresh temporary user-data-dir.
        b = pw.chromium.launch(
            executable_path=chromium_path,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = new_context(browser, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    d = REPO_ROOT / "artifacts"
    d.mkdir(parents=True, exist_ok=True)
    return d


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_until_answers(url: str, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
    # A direct opener: never route loopback through an environment proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with opener.open(url + "config", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:  # not up yet
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"Gradio app at {url} did not answer within {timeout_s}s: {last!r}")


@contextlib.contextmanager
def serve(demo: gr.Blocks, **launch_kwargs: Any) -> Iterator[str]:
    """Launch ``demo`` on 127.0.0.1 on a free port; yield its URL (ending in '/'); close it.

    Extra keyword arguments go to ``demo.launch`` (e.g. ``show_error=True``,
    ``allowed_paths=[...]``, ``css=...``).
    """
    kwargs: dict[str, Any] = dict(
        server_name="127.0.0.1",
        share=False,
        prevent_thread_lock=True,
        quiet=True,
        inbrowser=False,
        show_error=True,
        ssr_mode=False,
    )
    kwargs.update(launch_kwargs)
    fixed_port = kwargs.pop("server_port", None)
    attempts = 1 if fixed_port is not None else 5
    local_url: str | None = None
    for attempt in range(attempts):
        port = fixed_port if fixed_port is not None else free_port()
        try:
            _, local_url, _ = demo.launch(server_port=port, **kwargs)
            break
        except OSError:  # port taken between free_port() and bind: try another one
            if attempt == attempts - 1:
                raise
    assert local_url is not None
    url = local_url if local_url.endswith("/") else local_url + "/"
    try:
        _wait_until_answers(url)
        yield url
    finally:
        demo.close(verbose=False)


@pytest.fixture
def serve_blocks() -> Iterator[Callable[..., contextlib.AbstractContextManager[str]]]:
    """Factory fixture: ``with serve_blocks(demo, **launch_kwargs) as url: ...``.

    Any app still running when the test ends is closed.
    """
    started: list[gr.Blocks] = []

    @contextlib.contextmanager
    def _serve(demo: gr.Blocks, **launch_kwargs: Any) -> Iterator[str]:
        started.append(demo)
        with serve(demo, **launch_kwargs) as url:
            yield url

    yield _serve
    for demo in started:
        demo.close(verbose=False)
