"""The tokentrail web app (Gradio): layout + callbacks over the library, nothing else.

``build_app()`` returns the page as a ``gr.Blocks``; ``launch()`` serves it, on
127.0.0.1 with no share link unless asked. Importing this package is cheap: gradio and
torch are imported when one of these names is first used (``tokentrail serve --help``
and every other command never pay for them).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: public name -> the module of this package that defines it
_LAZY = {
    "build_app": "layout",
    "launch_options": "layout",
    "launch": "server",
    "startup_message": "server",
    "STATE_SESSIONS": "server",
    "LOOPBACK": "server",
    "INITIAL_TEXT": "options",
    "MAX_CHARS": "options",
    "MAX_TOKENS": "options",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tokentrail.app' has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from tokentrail.app.layout import build_app, launch_options
    from tokentrail.app.options import INITIAL_TEXT, MAX_CHARS, MAX_TOKENS
    from tokentrail.app.server import LOOPBACK, STATE_SESSIONS, launch, startup_message
