"""``tokentrail verify``: every SPEC identity, checked on the user's own model and text.

The parity tests prove the adapters on tiny random models of each family; this runs the
same identities on whatever checkpoint a user loads, so they can see that tokentrail's
numbers are their model's (TransformerLens users ask this in issue after issue). Each
identity compares a quantity tokentrail computes from its canonical layout with what the
framework itself produced in one forward pass (``hidden_states``, attention
probabilities, module outputs read by hooks, the model's own logits):

=================================  ===========================================================
identity                           compared
=================================  ===========================================================
``embedding``                      ``Emb(x_t, p_t)`` from canonical parts vs hidden state 0
``encodings own rows``             the ``encodings`` space's row of each token's own id at its
                                   position vs hidden state 0
``attention probabilities``        ``softmax(q.k / sqrt(d_head) + mask)`` from the canonical
                                   q/k maps (RoPE included) vs the model's attention weights
``heads (z = A v)``                the model's weights times the canonical values vs the
                                   vectors entering the output projection (SPEC ``heads``)
``heads recombine``                ``concat_h(z) @ W_O + b_O`` vs the attention sublayer's output
``layer_out``                      ``h_{l+1}`` vs ``hidden_states[l+1]`` (a decoder's last layer
                                   through its final norm, as the framework reports it)
``attn_resid_ln is the FFN input`` ``attn_resid_ln`` vs the input of the module that receives
                                   it (the FFN's norm, sequential pre-LN; the FFN itself,
                                   parallel residual; post-LN: the norm recomputed from
                                   ``attn_resid``)
``layer_out = attn_resid + mlp``   pre-norm models: the residual decomposition with the FFN
                                   sublayer's own output (SPEC ``mlp_out``)
``value/key/query spaces``         factorised dot products and squared norms vs explicit rows
                                   for a sample of ids, at the text's positions; layer 0's row
                                   of each token's own id vs its own q/k/v
``lens = logits``                  the logit lens' last layer vs the model's own logits
=================================  ===========================================================

Encoder-decoders: every identity above on each stack (rows named ``encoder: ...`` and
``decoder: ...``; the decoder runs on the text as its target, its teacher-forcing input,
and its "FFN input" row is cross-attention's query input ``attn_resid_ln``), and the
cross-attention identities:

=======================================  =====================================================
``encoder output``                       the encoder stack's last ``layer_out`` (through its
                                         final norm, T5) vs what the decoder pass's
                                         cross-attention read
``cross-attention probabilities``        ``softmax(scale * q.k)`` from the canonical cross
                                         maps (q from ``attn_resid_ln``, k from the encoder
                                         output) vs the model's cross-attention weights
``cross heads (z = A v)``                the model's weights times the canonical values of
                                         the encoder output vs the vectors entering the cross
                                         output projection (SPEC ``cross_heads``)
``cross heads recombine``                ``concat_h(z) @ W_O + b_O`` vs the cross-attention output
``cross_resid is the FFN input``         (post-LN: ``LN_cross``) ``cross_resid`` vs the input
                                         of the module after cross-attention
``layer_out = cross_resid + mlp_out``    pre-norm decoders: the residual decomposition
=======================================  =====================================================

Tolerance: ``|mine - model's| <= rtol * (|model's| + median|row|) + eps32 * max|row|``
elementwise, a row being the last dimension (a token's hidden vector, a head's vector, a
query's attention row), i.e. 1e-4 relative to each number and to a typical element of its
own row (SPEC: 1e-4 relative, fp32); ``eps32 * max|row|`` is one fp32 rounding step of the
row's largest element. An element far below its row's typical size is not held to 1e-4 of
its own tiny size, and one huge dimension (SmolLM2's 24,602 at layer 15) does not loosen
the others: the median ignores it. Each row reports ``atol`` (the absolute part) and
``ratio`` (error / tolerance, <= 1 passes) at its worst element; see
:mod:`tokentrail.session.identities`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import cast

import pandas as pd
import torch
from torch import Tensor, nn

from tokentrail.adapters import Adapter, EncoderStack
from tokentrail.engine.capture import capture, recorded
from tokentrail.engine.capture_cross import capture_cross
from tokentrail.session import identities
from tokentrail.session.identities import Check
from tokentrail.session.inputs import check_text, encode
from tokentrail.session.models import LoadedModel, load
from tokentrail.spec.errors import InputError

DEFAULT_TEXT = "Time flies like an arrow. Fruit flies like a banana."
RTOL = 1e-4


@dataclass(frozen=True)
class Verification:
    """All checks of one model on one text."""

    model: str
    family: str
    n_tokens: int
    causal: bool
    rows: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return all(r.passed is not False for r in self.rows)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(r for r in self.rows if r.passed is False)

    def row(self, identity: str) -> Check:
        for r in self.rows:
            if r.identity == identity:
                return r
        raise KeyError(identity)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                dict(
                    identity=r.identity,
                    status=r.status,
                    max_abs=r.max_abs,
                    max_rel=r.max_rel,
                    rtol=r.rtol,
                    atol=r.atol,
                    ratio=r.ratio,
                    where=r.where,
                    note=r.note,
                )
                for r in self.rows
            ]
        )


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


@contextmanager
def _reading(modules: dict[str, nn.Module], *, inputs: bool) -> Iterator[dict[str, Tensor]]:
    """The first input (or output) of each named module during one forward pass, batch
    item 0, filled in when the block ends (through :func:`~tokentrail.engine.capture.recorded`)."""
    got: dict[str, Tensor] = {}
    with recorded([(mod, name, inputs) for name, mod in modules.items()], select=lambda t: t[0]) as store:
        yield got
    got.update({name: calls[0] for name, calls in store.items() if calls})


def verify_adapter(
    adapter: Adapter,
    input_ids: Tensor,
    *,
    model_name: str = "",
    rtol: float = RTOL,
    layers: list[int] | None = None,
    sample: int = 32,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Verification:
    """Run every identity on ``adapter``'s model for ``input_ids`` (n,).

    ``layers``: the layers whose value/key/query spaces are checked (default: first,
    middle, last; building a space costs a V x d x d_head product); ``sample``: how many
    vocabulary ids (the text's own, then random ones) the space checks compare row by row."""
    say = progress or (lambda m: None)
    if not rtol > 0:
        raise InputError(f"rtol must be positive, got {rtol}")
    if sample < 1:
        raise InputError(f"sample must be at least 1, got {sample}")
    layers = _checked_layers(adapter.n_layers, layers)
    ids = input_ids.long()
    causal = adapter.resolve_causal(None)
    hps = [adapter.hook_points(l) for l in range(adapter.n_layers)]
    receivers = {str(l): (hp.ffn_norm if hp.ffn_norm is not None else hp.ffn_input) for l, hp in enumerate(hps)}
    receivers = {k: m for k, m in receivers.items() if m is not None}
    pre_norm = adapter.norm_placement == "pre"
    mlps = {str(l): hp.mlp_out for l, hp in enumerate(hps)} if pre_norm else {}
    say("running the model once")
    with torch.no_grad(), _reading(receivers, inputs=True) as ffn_in, _reading(mlps, inputs=False) as mlp_out:
        acts = capture(adapter, ids)
    rows = [
        identities.embedding(adapter, acts, rtol),
        identities.own_rows(adapter, acts, rtol),
        *identities.attention(adapter, acts, causal, rtol),
        identities.recombine(adapter, acts, rtol),
        identities.layer_out(adapter, acts, rtol),
        identities.ffn_input(adapter, acts, ffn_in, rtol),
        identities.decomposition(adapter, acts, mlp_out, rtol)
        if pre_norm and adapter.stack != "decoder"
        else identities.not_applicable(
            "layer_out = attn_resid + mlp_out",
            rtol,
            "cross-attention adds in between: see layer_out = cross_resid + mlp_out"
            if pre_norm
            else "post-LN: a norm follows the residual add",
        ),
    ]
    say(f"checking value/key/query spaces at layers {', '.join(map(str, layers))}")
    rows.append(identities.spaces(adapter, acts, layers, sample, seed, rtol))
    say("checking the logit lens against the model's logits")
    rows.append(identities.lens(adapter, acts, rtol))
    return Verification(model_name or adapter.family, adapter.family, int(ids.shape[0]), causal, tuple(rows))


def _checked_layers(L: int, layers: list[int] | None) -> list[int]:
    """The layers whose spaces are checked, each in 0..L-1 (default: first, middle, last)."""
    if layers is None:
        layers = [0, L // 2, L - 1]
    bad = [l for l in layers if not -L <= l < L]
    if bad:
        raise InputError(
            f"layer {bad[0]} is out of range: the model has {L} layers (0..{L - 1}, or negative from the end)"
        )
    return sorted({l % L for l in layers})


# ---- the user's model and text -----------------------------------------------------------------
def verify(
    model="minilm",
    text: str = DEFAULT_TEXT,
    *,
    rtol: float = RTOL,
    layers: list[int] | None = None,
    sample: int = 32,
    allow_pickle: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Verification:
    """Check every SPEC identity on ``model`` (a name, folder, hub id or loaded model) and ``text``.

    Returns a :class:`Verification`; ``.passed`` is False when any identity fails."""
    check_text(text)
    if not rtol > 0:
        raise InputError(f"rtol must be positive, got {rtol}")
    loaded = model if isinstance(model, LoadedModel) else load(model, allow_pickle=allow_pickle, progress=progress)
    enc = encode(loaded, text)
    if loaded.adapter.is_seq2seq:
        with loaded.lock:
            labels = torch.tensor(loaded.tokenizer(text_target=text)["input_ids"], dtype=torch.long)
        encoder = cast(EncoderStack, loaded.adapter)  # an encoder-decoder's adapter is its encoder stack
        decoder_ids = encoder.decoder_input(labels)
        return verify_seq2seq(
            encoder,
            enc.ids,
            decoder_ids,
            model_name=loaded.name,
            rtol=rtol,
            layers=layers,
            sample=sample,
            progress=progress,
        )
    return verify_adapter(
        loaded.adapter, enc.ids, model_name=loaded.name, rtol=rtol, layers=layers, sample=sample, progress=progress
    )


def verify_seq2seq(
    adapter: EncoderStack,
    source_ids: Tensor,
    decoder_ids: Tensor,
    *,
    model_name: str = "",
    rtol: float = RTOL,
    layers: list[int] | None = None,
    sample: int = 32,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Verification:
    """Every identity on both stacks of an encoder-decoder (``adapter``: its encoder stack)
    for ``source_ids`` (m,) and ``decoder_ids`` (n,), and the cross-attention identities."""
    say = progress or (lambda m: None)
    dec = adapter.decoder_stack()
    say("encoder stack")
    enc_v = verify_adapter(
        adapter,
        source_ids,
        model_name=model_name,
        rtol=rtol,
        layers=layers,
        sample=sample,
        seed=seed,
        progress=progress,
    )
    say("decoder stack")
    dec_v = verify_adapter(
        dec.bind(source_ids),
        decoder_ids,
        model_name=model_name,
        rtol=rtol,
        layers=layers,
        sample=sample,
        seed=seed,
        progress=progress,
    )
    say("cross-attention")
    with torch.no_grad():
        enc_acts = capture(adapter, source_ids.long())
        acts = capture_cross(dec, source_ids, decoder_ids)
    rows = [replace(r, identity=f"encoder: {r.identity}") for r in enc_v.rows]
    rows += [replace(r, identity=f"decoder: {r.identity}") for r in dec_v.rows]
    rows += [
        replace(r, identity=f"decoder: {r.identity}") for r in identities.cross(adapter, dec, enc_acts, acts, rtol)
    ]
    return Verification(
        model_name or adapter.family,
        adapter.family,
        int(source_ids.shape[0]) + int(decoder_ids.shape[0]),
        True,
        tuple(rows),
    )
