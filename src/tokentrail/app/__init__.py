"""The tokentrail web app (Gradio): layout + callbacks over the library, nothing else.

``build_app()`` returns the page as a ``gr.Blocks``; ``launch()`` serves it, on
127.0.0.1 with no share link unless asked.
"""

from __future__ import annotations

from .layout import build_app, launch_options
from .session import INITIAL_TEXT, MAX_CHARS, MAX_TOKENS

STATE_SESSIONS = 64  # sessions whose cached results the server keeps at most (oldest dropped)


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    models: list[str] | None = None,
    preload: tuple[str, ...] | list[str] = (),
    max_queue: int = 16,
):
    """Build the app and serve it (blocks until stopped)."""
    demo = build_app(models=models, preload=tuple(preload), max_queue=max_queue)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=bool(share),
        show_error=False,
        ssr_mode=False,
        state_session_capacity=STATE_SESSIONS,
        **launch_options(),
    )


__all__ = ["build_app", "launch", "launch_options", "INITIAL_TEXT", "MAX_CHARS", "MAX_TOKENS"]
