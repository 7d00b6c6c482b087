"""tokentrail: follow each token's encoding through a transformer, against its own vocabulary.

``import tokentrail`` is cheap: torch, transformers and pandas are imported on first use
of a name that needs them (``tt.trace``, ``tt.load``, ...).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from tokentrail.spec.errors import InputError, ModelError, TokentrailError, TooLong
from tokentrail.spec.options import TraceOptions
from tokentrail.spec.version import __version__

#: public name -> the module that defines it, with ``:name`` where it is called otherwise
#: there (imported when the name is first used)
_LAZY = {
    "trace": "api",
    "run": "api",
    "Run": "session.runner",
    "trail_many": "session.runner",
    "load": "session.models",
    "list_models": "session.resolve",
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
    "DEFAULT_MODEL": "session.models",
    "CATALOGUE": "session.resolve",
    "HUB_ID": "session.resolve",
    "MAX_LOADED": "session.models",
    "is_available": "session.resolve",
    "check_model_name": "session.resolve",
    "model_facts": "session.facts",
    "check_text": "session.inputs",
    "AttentionStep": "engine.walkthrough",
    "held_bytes": "engine.budget",
    "human_bytes": "engine.budget:human",
    "study_figures": "corpus.report:named_figures",
    "study_metadata": "corpus.report:metadata",
    # what the command line and the app need beyond the one-liners
    "Stack": "session.loaded",
    "resolve_device": "session.models",
    "resolve_dtype": "session.models",
    "set_defaults": "session.models",
    "read_stats": "store.stats",
    "attention_included": "results.trailio",
    "MAX_ATTENTION_ROWS": "results.trailio",
    "cache_root": "session.gguf_cache",
    "cache_entries": "session.gguf_cache",
    "write_study_pngs": "corpus.report:write_pngs",
    "fit": "corpus.fit",
    "Translator": "engine.translator",
    "load_translator": "store.translators",
    "translate": "session.translating",
}
"""A value ``"module:attr"`` publishes the module's ``attr`` under another name."""

#: public submodules: name -> where it lives (imported when first used)
_MODULES = {
    "plots": "plots",
    "geometry": "geometry",
    "maps": "maps",
}

__all__ = ["TokentrailError", "InputError", "ModelError", "TooLong", "TraceOptions", "__version__", *_LAZY, *_MODULES]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = import_module(f".{_MODULES[name]}", __name__)
    elif name in _LAZY:
        module, _, attr = _LAZY[name].partition(":")
        value = getattr(import_module(f".{module}", __name__), attr or name)
    else:
        raise AttributeError(f"module 'tokentrail' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs
    from tokentrail import plots
    from tokentrail.api import run, trace
    from tokentrail.corpus import Study, study
    from tokentrail.corpus.fit import fit
    from tokentrail.corpus.report import metadata as study_metadata
    from tokentrail.corpus.report import named_figures as study_figures
    from tokentrail.corpus.report import write_pngs as write_study_pngs
    from tokentrail.engine import geometry
    from tokentrail.engine.budget import held_bytes
    from tokentrail.engine.budget import human as human_bytes
    from tokentrail.engine.translator import Translator
    from tokentrail.engine.walkthrough import AttentionStep
    from tokentrail.present import maps
    from tokentrail.results.notebook import show
    from tokentrail.results.trail import HeadsAt, LensResult, RunInfo, Trail, View
    from tokentrail.results.trailio import MAX_ATTENTION_ROWS, attention_included
    from tokentrail.session.comparing import compare
    from tokentrail.session.comparison import Comparison
    from tokentrail.session.facts import model_facts
    from tokentrail.session.gguf_cache import cache_entries, cache_root
    from tokentrail.session.inputs import check_text
    from tokentrail.session.loaded import Stack
    from tokentrail.session.models import (
        DEFAULT_MODEL,
        MAX_LOADED,
        LoadedModel,
        load,
        resolve_device,
        resolve_dtype,
        set_defaults,
    )
    from tokentrail.session.resolve import CATALOGUE, HUB_ID, check_model_name, is_available, list_models
    from tokentrail.session.runner import Run, trail_many
    from tokentrail.session.translating import translate
    from tokentrail.session.verification import Verification, verify
    from tokentrail.store.stats import read_stats
    from tokentrail.store.translators import load_translator
