"""tokentrail: follow each token's encoding through a transformer, against its own vocabulary.

``import tokentrail`` is cheap: torch, transformers and pandas are imported on first use
of a name that needs them (``tt.trace``, ``tt.load``, ...).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from tokentrail.spec.errors import InputError, ModelError, TokentrailError
from tokentrail.spec.options import TraceOptions
from tokentrail.spec.version import __version__


#: public name -> the module that defines it (imported when the name is first used)
_LAZY = {
    "trace": "api",
    "run": "api",
    "Run": "session.runner",
    "trail_many": "session.runner",
    "load": "session.models",
    "list_models": "session.models",
    "LoadedModel": "session.models",
    "Trail": "results.trail",
    "View": "results.trail",
    "RunInfo": "results.trail",
    "HeadsAt": "results.trail",
    "LensResult": "results.trail",
    "verify": "session.verification",
    "Verification": "session.verification",
    "compare": "session.comparing",
    "Comparison": "session.comparison",
    "study": "corpus",
    "Study": "corpus",
    "show": "results.notebook",
}

#: public submodules: name -> where it lives (imported when first used)
_MODULES = {
    "plots": "present.plots",
    "geometry": "engine.geometry",
    "maps": "present.maps",
}

__all__ = ["TokentrailError", "InputError", "ModelError", "TraceOptions", "__version__", *_LAZY, *_MODULES]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = import_module(f".{_MODULES[name]}", __name__)
    elif name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'tokentrail' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs
    from tokentrail.engine import geometry
    from tokentrail.present import maps, plots
    from tokentrail.results.notebook import show
    from tokentrail.api import run, trace
    from tokentrail.session.models import LoadedModel, list_models, load
    from tokentrail.results.trail import HeadsAt, LensResult, RunInfo, Trail, View
    from tokentrail.session.runner import Run, trail_many
    from tokentrail.corpus import Study, study
    from tokentrail.session.verification import Verification, verify
    from tokentrail.session.comparison import Comparison
    from tokentrail.session.comparing import compare
