"""tokentrail: follow each token's encoding through a transformer, against its own vocabulary."""

__version__ = "0.1.0"

from .api import trace  # noqa: E402
from .errors import InputError, ModelError, TokentrailError  # noqa: E402
from .models import list_models, load  # noqa: E402
from .results import Trail, View  # noqa: E402



def __getattr__(name: str):
    # tt.verify loads lazily: importing tokentrail stays cheap
    if name == "verify":
        from .verify import verify

        return verify
    raise AttributeError(f"module 'tokentrail' has no attribute {name!r}")


__all__ = ["trace", "verify", "load", "list_models", "Trail", "View", "TokentrailError", "InputError", "ModelError", "__version__"]
