"""Web server hardening: one ASGI middleware in front of Gradio's routes.

- **No uploads**: the page takes no files, so ``POST …/upload`` is refused (403) before
  Gradio reads a byte of the body (it would otherwise accept any file of any size).
- **Security headers** on every HTTP response: ``X-Frame-Options: SAMEORIGIN`` and a
  Content-Security-Policy with ``frame-ancestors 'self'`` (no framing by other sites,
  i.e. no clickjacking), ``X-Content-Type-Options: nosniff`` (files are served as their
  declared type only), ``Referrer-Policy: no-referrer``. The CSP leaves scripts alone:
  Gradio's page needs its inline configuration script.
- **Bounded request bodies**: a body over :data:`MAX_BODY` bytes is refused with 413 and
  one line: at once when its ``Content-Length`` says so, else as soon as the bytes
  streamed so far pass the limit (nothing past it is read or kept).
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

MAX_BODY = 1 << 20
"""Bytes a request body may hold (1 MiB): the page sends at most a few texts of
:data:`tokentrail.app.options.MAX_CHARS` characters, and a text up to 100,000 characters
(which the page then refuses in one line) still fits, JSON-escaped."""
TOO_LARGE = f"request body over {MAX_BODY:,} bytes: this app takes at most that"

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
        declared = _content_length(scope)
        if declared is not None and declared > MAX_BODY:
            log.warning(
                "rejected %s %s: %s (Content-Length %d)", scope.get("method"), scope.get("path"), TOO_LARGE, declared
            )
            await _plain(send, 413, TOO_LARGE)
            return
        quiet_refusals(scope.get("app"))
        read = 0
        started = answered = False

        async def bounded_receive() -> dict[str, Any]:
            """The body's chunks while they stay within the limit; past it, the 413 is
            sent and the app is told the client left (so it stops reading)."""
            nonlocal read, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > MAX_BODY:
                    log.warning("rejected %s %s: %s (streamed)", scope.get("method"), scope.get("path"), TOO_LARGE)
                    if not started:
                        await _plain(send, 413, TOO_LARGE)
                    answered = True
                    return {"type": "http.disconnect"}
            return message

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal started
            if answered:
                return  # the 413 went out: the app's own answer to the cut body is dropped
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, bounded_receive, send_with_headers)
        except Exception as exc:  # an invalid call: one line in the log, 400 to the caller
            if answered:
                return  # a body cut at the limit: its line is logged already
            log.warning(
                "rejected %s %s: %s: %s", scope.get("method"), scope.get("path"), type(exc).__name__, str(exc)[:200]
            )
            if not started:
                await _plain(send, 400, "invalid request")


def quiet_refusals(app: Any) -> None:
    """Gradio prints a full traceback for every input value a component refuses (a slider
    value out of range, a choice not offered): a user's bad value, answered in the page.
    The server's log gets one line per refused request instead. Installed once on the
    app's Blocks, from the first request (the middleware sees the app only then)."""
    blocks = getattr(app, "blocks", None)  # gradio.routes.App: the Blocks it serves
    if blocks is None or getattr(blocks, "tokentrail_quiet_refusals", False):
        return
    from gradio.exceptions import Error

    original = blocks.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        try:
            return await original(block_fn, inputs, state, explicit_call)
        except Error as exc:
            if exc.print_exception:
                exc.print_exception = False
                log.warning("refused a call to %s: %s", block_fn.name, str(exc.message)[:200])
            raise

    blocks.preprocess_data = preprocess_data
    blocks.tokentrail_quiet_refusals = True


def _content_length(scope: Scope) -> int | None:
    """The request's declared body size, or None when it declares none (streamed)."""
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _plain(send: Send, status: int, text: str) -> None:
    body = json.dumps({"error": text}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def app_kwargs() -> dict[str, Any]:
    """``Blocks.launch(app_kwargs=...)``: the FastAPI app starts with the middleware."""
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(Hardening)]}
