"""tokentrail: follow each token's encoding through a transformer, against its own vocabulary."""

__version__ = "0.1.0"

from .api import trace  # noqa: E402
from .errors import InputError, ModelError, TokentrailError  # noqa: E402
from .models import list_models, load  # noqa: E402
from .results import Trail, View  # noqa: E402
from .study import Study, study  # noqa: E402

__all__ = ["trace", "study", "Study", "load", "list_models", "Trail", "View", "TokentrailError", "InputError", "ModelError", "__version__"]
