"""The logit lens (SPEC site ``lens``): the model's own output head read at every layer.

For each layer ``l`` and token ``t`` the residual vector (``layer_out`` = ``h_{l+1}`` by
default, or ``attn_resid``) goes through the head the model itself predicts with:

* decoders: the final norm, then the LM head. Capture's ``layer_out[L-1]`` is the last
  layer's module output, *before* the final norm (the framework's ``hidden_states[L]`` is
  after it), so the lens applies the norm to every layer alike and its last layer equals
  the model's own logits;
* encoders: the masked-LM head (BERT ``cls``, RoBERTa ``lm_head``) when the checkpoint
  has one; otherwise :class:`~tokentrail.spec.errors.ModelError` with the adapter's reason
  (the bundled MiniLM is a sentence-embedding checkpoint with no MLM head).

Per layer and token it reports the top-k predictions with their probabilities, the rank
of the token itself and, for decoders, the rank of the *next* token (what the model is
trained to predict there; -1 / NaN at the last token, which has no next token). Ranks
follow SPEC: 0-based, counting vocabulary ids with a strictly higher logit, so ties
favour the token; top-k ties go to the lower id. With every layer at hand it also reports
each layer's KL divergence from the final layer's distribution (tuned-lens' picture).

Nothing here runs the model's forward pass: the lens takes the adapter (for its head)
and the captured :class:`~tokentrail.engine.capture.Activations`.
"""

from __future__ import annotations

import torch

from tokentrail.adapters import Adapter
from tokentrail.engine.budget import BLOCK_BYTES, STATS_BYTES, WORKING_BYTES
from tokentrail.engine.budget import LENS_CHUNK_BYTES as CHUNK_BYTES
from tokentrail.engine.capture import Activations
from tokentrail.engine.metrics import rank_in_vocab
from tokentrail.engine.scoring import score_block
from tokentrail.engine.space_memory import release_scratch
from tokentrail.results.trail import LensResult
from tokentrail.spec.errors import InputError, ModelError
from tokentrail.spec.options import LENS_SITES

EMBEDDINGS = "embeddings"  # site name of the lens' embeddings row (one "layer": the original encodings)


@torch.no_grad()
def logit_lens(
    adapter: Adapter,
    acts: Activations,
    *,
    k: int = 15,
    site: str = "layer_out",  # or "embeddings": one row, the head applied to e_t
    chunk_bytes: int | None = None,
    beside_scratch: bool = False,
    kl: bool = True,
) -> LensResult:
    """Apply the model's own output head to ``site`` at every layer of ``acts``.

    Memory stays at ``O(chunk x V)``: tokens go through the head a chunk at a time and
    only the top-k, ranks and probabilities of each cell are kept. The chunks take the
    place of the views' scratch block (let go first), or with ``beside_scratch`` (a
    streamed trace, whose next layer's views need the block) come in what the memory
    bound leaves beside the block and a window of row norms.

    ``kl``: also the KL divergence of each layer's distribution from the final layer's
    (``KL(p_L ‖ p_l)``, nats; tuned-lens' measure), computed with the final layer's rows
    of each token block held beside the chunk; off for a single layer (a streamed trace
    sees one layer at a time) and for the embeddings row.
    """
    if site not in LENS_SITES and site != EMBEDDINGS:
        raise InputError(
            f"the logit lens reads {' or '.join(LENS_SITES)} (or {EMBEDDINGS} for the one row of the original encodings), not {site!r}"
        )
    if k < 1:
        raise InputError("k must be at least 1")
    if chunk_bytes is None:
        chunk_bytes = WORKING_BYTES - BLOCK_BYTES - STATS_BYTES if beside_scratch else CHUNK_BYTES
    if not beside_scratch:
        release_scratch(adapter)  # the lens' chunks take the place of the views' scratch block, not add to it
    head = adapter.lens_head()
    if head is None:
        raise ModelError(adapter.lens_unavailable_reason())
    # "embeddings": the one row of the original encodings e_t = h_0 (SPEC: the lens' embeddings row)
    vecs = acts.embedded[None] if site == EMBEDDINGS else acts.site(site)  # (L, n, d)
    L, n, _ = vecs.shape
    ids = acts.input_ids.long()
    decoder = adapter.is_decoder
    V = head(vecs[0, :1]).shape[1]  # the head's vocabulary (may differ from the embedding table's)
    kk = min(k, V)
    # logits, log-probs, probs (entr in place) and topk's work per row, and the final layer's
    # log-probs and probabilities kept for the KL of this token block's other layers
    step = max(1, chunk_bytes // (V * 4 * 6))
    # next token of t is t+1; the last token has none (its placeholder is masked below)
    nxt = torch.cat([ids[1:], ids[:1]])
    dev = vecs.device
    with_kl = kl and site != EMBEDDINGS and L > 1
    top_ids = torch.empty(L, n, kk, dtype=torch.long, device=dev)
    top_probs = torch.empty(L, n, kk, device=dev)
    own_rank = torch.empty(L, n, dtype=torch.long, device=dev)
    own_prob = torch.empty(L, n, device=dev)
    next_rank = torch.full((L, n), -1, dtype=torch.long, device=dev)
    next_prob = torch.full((L, n), float("nan"), device=dev)
    entropy = torch.empty(L, n, device=dev)
    div = torch.zeros(L, n, device=dev)
    # token blocks of b tokens; each block's layers go through the head a few at a time, the
    # final layer first (its distribution is the KL's reference): a short text is one block
    # and, when the chunk holds every layer, one product for all layers and positions
    b = min(n, max(1, step // L))
    per = max(1, step // b)  # layers per product
    order = [L - 1, *range(L - 1)]
    for t0 in range(0, n, b):
        tb = slice(t0, min(n, t0 + b))
        m = tb.stop - t0
        ref_logp = ref_p = None
        for j in range(0, L, per):
            layers = order[j : j + per]
            rows = vecs[layers, tb].reshape(len(layers) * m, -1)
            logits = head(rows).float()  # (len(layers) * m, V)
            logp = torch.log_softmax(logits, dim=-1)
            if with_kl and ref_logp is None:  # the final layer's rows come first
                ref_logp = logp[:m].clone()
                ref_p = ref_logp.exp()
            probs = logp.exp()
            ent = torch.special.entr(probs, out=probs).sum(-1)  # in place: one (m, V) fewer
            del probs
            own = ids[tb].repeat(len(layers))
            own_p = logp.gather(1, own[:, None])[:, 0].exp()
            if decoder:
                nx = nxt[tb].repeat(len(layers))
                n_rank = rank_in_vocab(logits, nx)
                n_prob = logp.gather(1, nx[:, None])[:, 0].exp()
            if with_kl:
                assert ref_logp is not None and ref_p is not None
                # KL(p_final ‖ p_l) = Σ_v p_final (log p_final − log p_l), one layer's rows at a time
                kl_rows = torch.cat(
                    [(ref_p * (ref_logp - logp[i * m : (i + 1) * m])).sum(-1) for i in range(len(layers))]
                )
            # the own rank and the top-k in the fused passes of the similarity views (it consumes logits)
            _, rank, t_ids, _ = score_block(logits, own, kk)
            t_probs = logp.gather(1, t_ids).exp()
            for i, layer in enumerate(layers):
                r = slice(i * m, (i + 1) * m)
                entropy[layer, tb], own_prob[layer, tb], own_rank[layer, tb] = ent[r], own_p[r], rank[r]
                top_ids[layer, tb], top_probs[layer, tb] = t_ids[r], t_probs[r]
                if decoder:
                    next_rank[layer, tb], next_prob[layer, tb] = n_rank[r], n_prob[r]
                if with_kl:
                    div[layer, tb] = kl_rows[r]
            del logits, logp
    if decoder:
        next_rank[:, -1] = -1
        next_prob[:, -1] = float("nan")
    return LensResult(
        site=site,
        is_decoder=decoder,
        input_ids=ids.cpu().numpy().copy(),
        top_ids=top_ids.cpu().numpy(),
        top_probs=top_probs.cpu().numpy(),
        own_rank=own_rank.cpu().numpy(),
        own_prob=own_prob.cpu().numpy(),
        next_rank=next_rank.cpu().numpy() if decoder else None,
        next_prob=next_prob.cpu().numpy() if decoder else None,
        entropy=entropy.cpu().numpy(),
        kl=div.clamp_min_(0.0).cpu().numpy() if with_kl else None,
    )
