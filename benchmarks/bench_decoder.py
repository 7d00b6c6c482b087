"""Decoder benchmark: tokentrail's exact fast path against the obvious way, on the
bundled SmolLM2-135M (Llama: 30 layers, 576 wide, 9 heads / 3 KV heads, V = 49,152).

In one process, for one text of --tokens tokens:

1. residual sites attn_resid and layer_out, space encodings, cosine, top-15 and
   overlap@100, all tokens and layers: ``tokentrail.analysis.bare.analyse`` against a naive
   loop (per token and layer: build the vocabulary matrix, all similarities, full sort);
2. the heads site in one layer's value space (grouped-query: each KV head's space is
   shared by 3 query heads): ``analyse(sites=["heads"])`` restricted to that layer's
   numbers, against building each head's projected vocabulary ``v_proj(RMSNorm(W_E))``
   per token and sorting;
3. the logit lens (final norm + LM head on every layer).

Both sides must give identical ranks and top-k ids (differences only at fp32 near-ties
are reported, not hidden). Prints wall times, the speed-up and peak RSS.

    python benchmarks/bench_decoder.py             # 16 tokens
    python benchmarks/bench_decoder.py --tokens 4  # a quick smoke run
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

import tokentrail as tt
from tokentrail.analysis.bare import analyse
from tokentrail.engine.capture import capture
from tokentrail.spec.options import TraceOptions

TEXT = (
    "Time flies like an arrow. Fruit flies like a banana. The old cat sat by the river bank "
    "and watched the boats go by while the sun set slowly over the quiet hills of the valley."
)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def naive_rank_top(R: torch.Tensor, r: torch.Tensor, own: int, k: int):
    """All similarities, then a full stable sort (ties: lower id first)."""
    s = torch.nn.functional.cosine_similarity(R, r[None], dim=-1)
    order = torch.sort(-s, stable=True).indices
    rank = int((s > s[own]).sum())
    return rank, order[:k]


def near_tie_only(R: torch.Tensor, r: torch.Tensor, own: int, rank: int, top, tol: float = 1e-6) -> bool:
    """Is a fast-vs-naive disagreement explained by similarities within ``tol`` (float64)?"""
    s = torch.nn.functional.cosine_similarity(R.double(), r.double()[None], dim=-1)
    lo, hi = int((s > s[own] + tol).sum()), int((s > s[own] - tol).sum())
    top = torch.as_tensor(top)
    st = s[top]
    rest = s.clone()
    rest[top] = -2
    ordered = bool((st[1:] <= st[:-1] + tol).all())
    complete = bool(st[-1] >= rest.max() - tol)
    return lo <= rank <= hi and ordered and complete


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--layer", type=int, default=15, help="layer for the heads comparison")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = tt.load("smollm2")
    print(f"load (cached conversion): {time.perf_counter() - t0:.1f} s; peak RSS {peak_mib():.0f} MiB")
    a = model.adapter
    ids = torch.tensor(model.tokenizer(TEXT)["input_ids"][: args.tokens])
    n, L, H, k, K = len(ids), a.n_layers, a.n_heads, 15, 100
    label = model.labels
    common = dict(
        text=TEXT, tokens=[str(i) for i in ids.tolist()], special=[False] * n, label=label, model_name="smollm2"
    )
    print(
        f"SmolLM2-135M: {L} layers, {H} heads / {a.n_kv_heads} KV heads, V={a.vocab_size}; {n} tokens; torch threads {torch.get_num_threads()}"
    )

    # ---- 1. residual sites ------------------------------------------------------------
    sites = ["attn_resid", "layer_out"]
    analyse(
        a, model.spaces, ids, options=TraceOptions(sites=tuple(sites), k=k, overlap_k=K), **common
    )  # warm (space build)
    t = time.perf_counter()
    trail = analyse(a, model.spaces, ids, options=TraceOptions(sites=tuple(sites), k=k, overlap_k=K), **common)
    fast = time.perf_counter() - t
    rss_fast = peak_mib()
    acts = capture(a, ids)
    t = time.perf_counter()
    mismatch = ties = 0
    for site in sites:
        vecs = acts.site(site)
        v = trail.view(site, "encodings", "cosine")
        for layer in range(L):
            for tok in range(n):
                R = a.embed(
                    torch.arange(a.vocab_size), torch.zeros(a.vocab_size, dtype=torch.long)
                )  # Emb(v, p): W_E[v] for RoPE models
                rank, top = naive_rank_top(R, vecs[layer, tok], int(ids[tok]), k)
                if rank != v.rank[layer, tok] or not torch.equal(top, torch.from_numpy(v.top_ids[layer, tok])):
                    if near_tie_only(
                        R, vecs[layer, tok], int(ids[tok]), int(v.rank[layer, tok]), v.top_ids[layer, tok]
                    ):
                        ties += 1
                    else:
                        mismatch += 1
    naive = time.perf_counter() - t
    print(f"\n[residual] attn_resid + layer_out, encodings, cosine, top-{k}, overlap@{K}: {2 * L * n} queries")
    print(
        f"  fast  {fast:7.2f} s   naive {naive:7.2f} s   speed-up {naive / fast:5.1f}x   "
        f"differences: {ties} at fp32 near-ties (float64 gap < 1e-6), {mismatch} unexplained"
    )

    # ---- 2. heads, one layer's value spaces ---------------------------------------------
    layer = args.layer
    t = time.perf_counter()
    heads = analyse(a, model.spaces, ids, options=TraceOptions(sites=("heads",), spaces=("value",), k=k), **common)
    fast_all_layers = time.perf_counter() - t
    hv = heads.view("heads", "value", "cosine")
    norm = a.attn_input_norm(layer)
    proj = a.projection(layer, "v")
    z = acts.z[layer]  # (n, H, dh)
    t = time.perf_counter()
    hmis = hties = 0
    for tok in range(n):
        for h in range(H):
            g = int(a.kv_heads()[h])
            X = norm(a.embedding_table().float())  # RMSNorm_l(W_E): value rows need no position under RoPE
            R = X @ proj.weight[g].T + (0 if proj.bias is None else proj.bias[g])
            rank, top = naive_rank_top(R, z[tok, h], int(ids[tok]), k)
            if rank != hv.rank[layer, h, tok] or not torch.equal(top, torch.from_numpy(hv.top_ids[layer, h, tok])):
                if near_tie_only(R, z[tok, h], int(ids[tok]), int(hv.rank[layer, h, tok]), hv.top_ids[layer, h, tok]):
                    hties += 1
                else:
                    hmis += 1
    naive_h = time.perf_counter() - t
    fast_h = fast_all_layers / L
    print(f"\n[heads] value space of layer {layer} (9 query heads over 3 shared KV-head spaces): {n * H} queries")
    print(
        f"  fast  {fast_h:7.2f} s (all {L} layers: {fast_all_layers:.1f} s)   naive {naive_h:7.2f} s (one layer)   speed-up {naive_h / fast_h:5.1f}x   "
        f"differences: {hties} at near-ties, {hmis} unexplained"
    )

    # ---- 3. logit lens -----------------------------------------------------------------
    t = time.perf_counter()
    analyse(a, model.spaces, ids, options=TraceOptions(sites=("layer_out",), k=k, lens=True), **common)
    lens_s = time.perf_counter() - t - fast / 2
    print(f"\n[lens] final norm + LM head on {L} layers x {n} tokens: ~{max(lens_s, 0):.2f} s on top of the analysis")
    print(f"peak RSS {max(rss_fast, peak_mib()):.0f} MiB")
    if mismatch or hmis:
        raise SystemExit(f"fast and naive disagree on {mismatch + hmis} results beyond fp32 near-ties")


if __name__ == "__main__":
    main()
