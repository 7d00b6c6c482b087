"""A fitted translator (issue 26) applied to one text's activations.

* an **identity** translator gives the *translated views*: each fitted site's vectors
  mapped back into the space of the original encodings (``h W + b``), scored like any
  residual site against the whole vocabulary (self-similarity, rank, top-k, overlap). The
  site is named ``<site>_translated``, so a frame filter on ``translated`` finds them.
* a **prediction** translator gives the *fitted lens*: each layer's vector mapped to the
  last layer's residual, read through the model's own final norm and head
  (:func:`~tokentrail.analysis.lens.logit_lens` on the translated vectors), site
  ``<site>_translated``.

:func:`lens_versus_final` scores any lens against the model's own final prediction: per
cell, whether its top-1 is the final top-1 and ``KL(final || lens)`` in nats.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from tokentrail.adapters import Adapter
from tokentrail.analysis.lens import logit_lens
from tokentrail.analysis.residual import residual_views
from tokentrail.engine.capture import Activations
from tokentrail.engine.space_cache import SpaceCache
from tokentrail.engine.translator import Translator
from tokentrail.results.trail import LensResult, View
from tokentrail.spec.errors import InputError, ModelError
from tokentrail.spec.options import RESIDUAL_SITES, TraceOptions

SUFFIX = "_translated"


def translated_name(site: str) -> str:
    return site + SUFFIX


def check_layers(translator: Translator, n_layers: int) -> None:
    """A translator's views need every layer of each site it fits."""
    for site in translator.sites:
        if translator.layers(site) != tuple(range(n_layers)):
            raise InputError(
                f"the translator fits {site} at layers {list(translator.layers(site))}; its views need every "
                f"layer (0-{n_layers - 1}): fit it without --layers"
            )


def with_site(acts: Activations, site: str, vecs: Tensor) -> Activations:
    """A copy of ``acts`` whose ``site`` reads ``vecs`` (L, n, d); the other fields shared."""
    if site == "attn_resid":
        return replace(acts).keep_attn_resid(vecs)
    if site in ("layer_out", "attn_resid_ln", "mlp_out"):
        if site == "layer_out":  # attn_resid is made from layer_out: keep the model's own
            return replace(acts, layer_out=vecs).keep_attn_resid(acts.attn_resid)
        return replace(acts, **{site: vecs})
    raise InputError(f"a translator's views read layer_out, attn_resid, attn_resid_ln or mlp_out, not {site!r}")


@torch.no_grad()
def translated_views(
    adapter: Adapter, spaces: SpaceCache, acts: Activations, translator: Translator, options: TraceOptions
) -> list[View]:
    """An identity translator's views of ``acts``: every fitted site, translated, against
    every residual space and similarity of ``options``."""
    if translator.kind != "identity":
        return []
    check_layers(translator, adapter.n_layers)
    residual_spaces = list(dict.fromkeys(sp for site, sp in options.pairs() if site in RESIDUAL_SITES)) or ["encodings"]
    views: list[View] = []
    for site in translator.sites:
        moved = with_site(acts, site, translator.apply(site, acts.site(site)))
        with spaces.scratch() as take:
            for sp in residual_spaces:
                for v in residual_views(
                    adapter,
                    spaces.get(sp),
                    moved,
                    [site],
                    options.similarities,
                    options.k,
                    options.overlap_k,
                    192 << 20,
                    take,
                ):
                    views.append(replace(v, site=translated_name(site)))
    return views


@torch.no_grad()
def fitted_lens(adapter: Adapter, acts: Activations, translator: Translator, *, k: int = 15) -> LensResult:
    """A prediction translator's lens: its site's vectors translated to the last layer's
    residual, then the model's own final norm and head (site ``<site>_translated``)."""
    if translator.kind != "prediction":
        raise InputError(f"the fitted lens needs a prediction translator, this one is {translator.kind!r}")
    site = translator.sites[0]
    lens_site = site if site in ("layer_out", "attn_resid") else None
    if lens_site is None:
        raise InputError(f"the fitted lens reads layer_out or attn_resid, this translator fits {site!r}")
    check_layers(translator, adapter.n_layers)
    moved = with_site(acts, lens_site, translator.apply(lens_site, acts.site(lens_site)))
    return replace(logit_lens(adapter, moved, k=k, site=lens_site), site=translated_name(site))


@torch.no_grad()
def lens_versus_final(adapter: Adapter, vecs: Tensor, final: Tensor) -> tuple[Tensor, Tensor]:
    """For (L, n, d) residual vectors read through the model's head and the (n, d) last
    layer's residual (the model's own prediction): per cell whether the top-1 equals the
    final top-1, and ``KL(final || lens)`` in nats. (L, n) each."""
    head = adapter.lens_head()
    if head is None:
        raise ModelError(adapter.lens_unavailable_reason())
    ref = torch.log_softmax(head(final).float(), -1)  # (n, V)
    top = ref.argmax(-1)
    agree, kl = [], []
    for layer in range(vecs.shape[0]):
        logp = torch.log_softmax(head(vecs[layer]).float(), -1)
        agree.append(logp.argmax(-1) == top)
        kl.append((ref.exp() * (ref - logp)).sum(-1))
    return torch.stack(agree), torch.stack(kl)
