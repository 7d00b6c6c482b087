"""A Trail with a fitted translator's views and lens added (issue 26): ``tt.trace(...,
translator=DIR)`` and ``tokentrail trace --translator DIR``.

The translator is loaded for the run's model (refused in one line when it was fitted on
another, :func:`tokentrail.store.translators.load_translator`); an identity translator
adds the ``<site>_translated`` views, a prediction translator the fitted lens
(``trail.fitted_lens``), beside the logit lens when that was asked for
(:mod:`tokentrail.analysis.translated`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from tokentrail.analysis.translated import fitted_lens, translated_views
from tokentrail.engine.translator import Translator
from tokentrail.results.trail import Trail
from tokentrail.session.runner import Run
from tokentrail.store.translators import load_translator


def model_facts_of(model) -> dict:
    """The facts a translator records of its model, for this loaded model."""
    a = model.adapter
    return {
        "model": model.name,
        "model_revision": model.revision,
        "model_type": str(a.config.model_type),
        "n_layers": a.n_layers,
        "d_model": a.d_model,
        "vocab_size": a.vocab_size,
    }


def translator_for(run: Run, translator: str | Path | Translator) -> Translator:
    """``translator`` (a folder, or one already loaded) checked against the run's model."""
    if isinstance(translator, Translator):
        return translator
    return load_translator(translator, model_facts_of(run.model))


def translate(run: Run, trail: Trail, translator: str | Path | Translator) -> Trail:
    """``trail`` (the run's) with the translator's views or fitted lens added."""
    t = translator_for(run, translator)
    m = run.model
    with m.lock:
        views = translated_views(m.adapter, m.spaces, run.acts, t, trail.info.options)
    lens = fitted_lens(m.adapter, run.acts, t, k=trail.info.options.k) if t.kind == "prediction" else None
    if lens is not None:  # the text's tokens and its ids' labels, as the logit lens carries them
        lens = lens.labelled(run.tokens, m.labels)
    ids = {int(i) for v in views for i in np.unique(v.top_ids)}
    if lens is not None:
        ids |= lens.ids_used()
    labels = {**trail.labels, **m.labels(sorted(ids - set(trail.labels)))}
    return replace(trail, views=trail.views + tuple(views), labels=labels, fitted_lens=lens)
