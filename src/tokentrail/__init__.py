"""tokentrail: follow each token's encoding through a transformer, against its own vocabulary.

``import tokentrail`` is cheap: torch, transformers and pandas are imported on first use
of a name that needs them (``tt.trace``, ``tt.load``, ...).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import InputError, ModelError, TokentrailError
from .options import TraceOptions

__version__ = "0.1.0"

#: public name -> the module that defines it (imported when the name is first used)
_LAZY = {
    "trace": "api",
    "run": "api",
    "Run": "runner",
    "trail_many": "runner",
    "load": "models",
    "list_models": "models",
    "LoadedModel": "models",
    "Trail": "results",
    "View": "results",
    "RunInfo": "results",
    "HeadsAt": "results",
    "LensResult": "results",
    "verify": "verification",
    "Verification": "verification",
    "compare": "comparison",
    "Comparison": "comparison",
    "study": "corpus",
    "Study": "corpus",
    "plots": None,  # the submodule itself
    "show": "notebook",
    "geometry": None,
    "maps": None,
}

__all__ = ["TokentrailError", "InputError", "ModelError", "TraceOptions", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tokentrail' has no attribute {name!r}")
    module = import_module(f".{_LAZY[name] or name}", __name__)
    value = module if _LAZY[name] is None else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs
    from . import geometry, maps, plots
    from .notebook import show
    from .api import run, trace
    from .models import LoadedModel, list_models, load
    from .results import HeadsAt, LensResult, RunInfo, Trail, View
    from .runner import Run, trail_many
    from .corpus import Study, study
    from .verification import Verification, verify
    from .comparison import Comparison, compare
