"""Serving the web app: ``launch()`` builds the page (:func:`tokentrail.app.layout.build_app`)
and serves it, on 127.0.0.1 with no share link unless asked."""

from __future__ import annotations

import os
import signal
import sys
import threading

from tokentrail.app.layout import build_app, launch_options
from tokentrail.app.options import INITIAL_TEXT, MAX_CHARS, MAX_TOKENS

STATE_SESSIONS = 64  # sessions whose cached results the server keeps at most (oldest dropped)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def startup_message(url: str, host: str, share: bool, share_url: str | None) -> str:
    """What ``tokentrail serve`` prints once the page answers (in place of Gradio's own
    lines, whose "set `share=True` in `launch()`" hint does not apply to the CLI)."""
    lines = [f"tokentrail app running on {url}"]
    if share_url:
        lines.append(f"public share link: {share_url} (anyone with the link can use this app; temporary, up to a week)")
    elif share:
        lines.append("no share link could be created (the share server is unreachable): serving on this address only")
    if not share_url:
        scope = "this machine only" if host in LOOPBACK else f"every machine that can reach {host}"
        lines.append(
            f"reachable from {scope}. To share it: `tokentrail serve --share` (a temporary public link), "
            "or `--host 0.0.0.0` for your local network"
        )
    lines.append("press Ctrl+C to stop")
    return "\n".join(lines)


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    models: list[str] | None = None,
    preload: tuple[str, ...] | list[str] = (),
    max_queue: int = 16,
    block: bool = True,
    model_threads: int | None = None,
    studies: str | None = None,
    translators: str | None = None,
):
    """Build the app and serve it; blocks until stopped unless ``block=False`` (then the
    running ``gr.Blocks`` is returned: ``.close()`` stops it).

    ``model_threads``: torch's threads for model work in this server; default one fewer
    than the CPUs (at least one), so a long analysis leaves a core for other pages' clicks.
    ``studies``: the folder of corpus studies the Study tab may open.
    ``translators``: the folder of fitted translators (``tokentrail fit``) the page offers.
    """
    import torch

    torch.set_num_threads(model_threads or max(1, (os.cpu_count() or 1) - 1))
    demo = build_app(
        models=models, preload=tuple(preload), max_queue=max_queue, studies=studies, translators=translators
    )
    demo.launch(
        server_name=host,
        server_port=port,
        share=bool(share),
        show_error=False,
        ssr_mode=False,
        state_session_capacity=STATE_SESSIONS,
        quiet=True,  # our own startup message below says how to share
        prevent_thread_lock=True,
        **launch_options(),
    )
    print(startup_message(demo.local_url, host, bool(share), demo.share_url), flush=True)
    if not block:
        return demo
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a stop by a service manager cleans up too
    try:
        demo.block_thread()
    finally:
        demo.tokentrail_folder.remove()  # no temp folder left behind
    return demo


__all__ = ["build_app", "launch", "launch_options", "startup_message", "INITIAL_TEXT", "MAX_CHARS", "MAX_TOKENS"]
