"""Web server hardening: one ASGI middleware in front of Gradio's routes.

- **No uploads**: the page takes no files, so ``POST …/upload`` is refused (403) before
  Gradio reads a byte of the body (it would otherwise accept any file of any size).
- **Security headers** on every HTTP response: ``X-Frame-Options: SAMEORIGIN`` and a
  Content-Security-Policy with ``frame-ancestors 'self'`` (no framing by other sites,
  i.e. no clickjacking), ``X-Content-Type-Options: nosniff`` (files are served as their
  declared type only), ``Referrer-Policy: no-referrer``. The CSP leaves scripts alone:
  Gradio's page needs its inline configuration script.
- **Invalid API calls** (an unknown ``fn_index``, a malformed body) answer 400 with one
  line, and the log gets one warning line instead of a traceback per call.

Installed through ``Blocks.launch(app_kwargs=...)`` by :func:`tokentrail.app.launch_options`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("tokentrail.app")

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"content-security-policy", b"frame-ancestors 'self'; object-src 'none'; base-uri 'self'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def is_upload(scope: Scope) -> bool:
    path = scope.get("path", "").rstrip("/")
    return scope.get("method") == "POST" and (path.endswith("/upload") or path == "/upload")


class Hardening:
    """ASGI middleware: see the module doc."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if is_upload(scope):
            await _plain(send, 403, "uploads are disabled: this app takes no files")
            return
        started = False

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:  # an invalid call: one line in the log, 400 to the caller
            log.warning(
                "rejected %s %s: %s: %s", scope.get("method"), scope.get("path"), type(exc).__name__, str(exc)[:200]
            )
            if not started:
                await _plain(send, 400, "invalid request")


async def _plain(send: Send, status: int, text: str) -> None:
    body = json.dumps({"error": text}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def app_kwargs() -> dict[str, Any]:
    """``Blocks.launch(app_kwargs=...)``: the FastAPI app starts with the middleware."""
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(Hardening)]}
