"""One error type for everything a user can get wrong.

Messages say what was wrong and what to do next; the CLI prints them as one line and
the web app shows them in the page. ``assert`` is kept for internal invariants only.
"""

import functools


class TokentrailError(Exception):
    """Base class of every error tokentrail raises on purpose."""


class InputError(TokentrailError):
    """The text, a token/layer/head index or an option is not usable."""


class ModelError(TokentrailError):
    """A model cannot be found, loaded safely, or is of an unsupported architecture."""


class TooLong(InputError):
    """The text has more tokens than the model (or the caller's ``max_tokens``) takes.

    ``tokens``: the text's token count; ``limit``: the most it may have. Callers with
    their own limits (the app) catch it by type and say it in their words."""

    def __init__(self, message: str, *, tokens: int, limit: int):
        super().__init__(message)
        self.tokens = tokens
        self.limit = limit

    def __reduce__(self):  # pickled with its fields (a Ray worker's error crosses processes)
        return functools.partial(type(self), tokens=self.tokens, limit=self.limit), (str(self),)
