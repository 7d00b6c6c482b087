"""One error type for everything a user can get wrong.

Messages say what was wrong and what to do next; the CLI prints them as one line and
the web app shows them in the page. ``assert`` is kept for internal invariants only.
"""


class TokentrailError(Exception):
    """Base class of every error tokentrail raises on purpose."""


class InputError(TokentrailError):
    """The text, a token/layer/head index or an option is not usable."""


class ModelError(TokentrailError):
    """A model cannot be found, loaded safely, or is of an unsupported architecture."""
