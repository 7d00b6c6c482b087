"""How close the exact vocabulary work is to one matrix product, and to a peer's plain-torch route.

    python benchmarks/bench_floor.py            # MiniLM, SmolLM2, roberta-base shape; scale 64/256/1024 tokens
    python benchmarks/bench_floor.py --quick    # shorter texts, scale 16/64 (a smoke run)

All in one process, so every ratio compares numbers taken under the same load:

1. **floor**: per model, a warm ``analyse`` of the residual sites (attn_resid + layer_out,
   ``encodings``, cosine, top-15, overlap@100, forward pass included) against the GEMM
   floor: one ``(queries x d) @ (d x V)`` product of the same shape (queries = 2 sites x
   L layers x n tokens + the n original encodings).
2. **peer**: the route a TransformerLens user writes (here in plain torch, on the
   residuals of the model's own forward pass): normalise ``W_E`` and the residuals once,
   one matmul per layer, ``topk``, count the rank, overlap with the previous layer. It
   compares with ``W_E`` itself, i.e. tokentrail's ``embeddings`` space, so ours is timed
   in that space for a like-for-like ratio. For post-LN encoders (MiniLM, roberta) that
   is not the position-aware ``encodings`` space the exact analysis uses: the peer has no
   cheap way to it (its rows change with position), and ours is printed for it too.
   Results are compared query by query; every disagreement is recomputed in float64 and
   must be an fp32 near-tie (gap < 1e-6).
3. **scale**: the SmolLM2 everything-trace (``site="all", space="all", lens=True``) at
   several lengths, the fitted exponent of time in tokens, and at each length the peak
   RSS over the loaded model (peak reset with /proc/self/clear_refs before each length),
   split into what the Trail holds (``held_bytes``), the head-space cache
   (``SpaceCache.nbytes``) and the working memory (the rest; of it, the activations the
   views are computed from: every layer's for a captured trace, one layer's for a
   streamed one, which long texts are), with issue 13's bound: the weights, one ``V x d``
   table and the largest fixed chunk.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import tokentrail as tt
from tokentrail.analysis.bare import analyse
from tokentrail.analysis.checks import streams
from tokentrail.engine.budget import WORKING_BYTES, held_bytes
from tokentrail.engine.capture import capture
from tokentrail.spec.options import ALL_SPACES, HEAD_SITE, RESIDUAL_SITES

SITES = ("attn_resid", "layer_out")
K, OVERLAP_K, TIE_TOL = 15, 100, 1e-6
TEXT = (
    "Time flies like an arrow. Fruit flies like a banana. The old cat sat by the river bank "
    "and watched the boats go by while the sun set slowly over the quiet hills of the valley. "
)
ROBERTA = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=1026,
)


def rss_mib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Subject:
    """A model with an adapter, its space cache and a way to make n-token inputs."""

    def __init__(self, name: str):
        self.name = name
        if name == "roberta-base-shaped":
            from transformers import RobertaConfig, RobertaModel

            from tokentrail.adapters import adapter_for
            from tokentrail.engine.space_cache import SpaceCache

            torch.manual_seed(0)
            self.adapter = adapter_for(RobertaModel(RobertaConfig(**ROBERTA, attn_implementation="eager")).eval())
            self.spaces = SpaceCache(self.adapter)
            self.tokenizer = None
        else:
            m = tt.load(name)
            self.adapter, self.spaces, self.tokenizer = m.adapter, m.spaces, m.tokenizer

    def ids(self, n: int) -> torch.Tensor:
        if self.tokenizer is None:
            g = torch.Generator().manual_seed(n)
            ids = torch.randint(3, self.adapter.vocab_size, (n,), generator=g)
            ids[0], ids[-1] = 0, 2
            return ids
        ids = self.tokenizer(TEXT * (1 + n // 30))["input_ids"]
        assert len(ids) >= n, "text too short"
        return torch.tensor(ids[:n])

    def analyse(self, ids, **kw):
        toks = [str(i) for i in ids.tolist()]
        return analyse(
            self.adapter,
            self.spaces,
            ids,
            text=" ".join(toks),
            tokens=toks,
            special=[False] * len(toks),
            label=lambda vs: {int(v): str(v) for v in vs},
            model_name=self.name,
            **as_options(analyse, kw),
        )


def as_options(fn, kw: dict) -> dict:
    """The benchmark's option keywords in the form ``fn`` takes: one ``options=TraceOptions``
    (this tree), or the loose keywords of a tree from before it (``--against``)."""
    import inspect

    if "options" not in inspect.signature(fn).parameters:
        return kw
    from tokentrail.spec.options import TraceOptions

    renamed = {
        ("spaces" if k == "space_kinds" else k): (tuple(v) if isinstance(v, (list, tuple)) else v)
        for k, v in kw.items()
    }
    return {"options": TraceOptions(**renamed)}


def timed(f, repeat: int = 1):
    best, out = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t)
    return best, out


def product_seconds(a, queries: int, repeat: int) -> float:
    """The GEMM floor: one ``(queries x d) @ (d x V)`` product with the embedding table, warm, best of ``repeat``."""
    A, X = torch.randn(queries, a.d_model), a.embedding_table().float()
    out = torch.empty(queries, a.vocab_size)
    torch.mm(A, X.T, out=out)
    return timed(lambda: torch.mm(A, X.T, out=out), repeat)[0]


def residual_kw(space: str) -> dict:
    return dict(sites=SITES, space_kinds=(space,), similarities=("cosine",), k=K, overlap_k=OVERLAP_K)


# ---- 1. trace against the GEMM floor ---------------------------------------------------------------
def floor(sub: Subject, n: int, repeat: int, base=None) -> None:
    a = sub.adapter
    ids = sub.ids(n)
    sub.analyse(ids, **residual_kw("encodings"))  # cold: builds the space
    trace_s, _ = timed(lambda: sub.analyse(ids, **residual_kw("encodings")), repeat)
    Q, d, V = (len(SITES) * a.n_layers + 1) * n, a.d_model, a.vocab_size
    gemm_s = product_seconds(a, Q, repeat)
    fwd_s, _ = timed(lambda: capture(a, ids), repeat)
    print(
        f"  floor  {n} tokens, {Q} queries x {V} rows x d={d}: trace {trace_s:6.2f} s   GEMM {gemm_s:6.2f} s   "
        f"ratio {trace_s / gemm_s:4.2f}x (goal <= 1.5x)   [forward pass alone {fwd_s:.2f} s; "
        f"trace without it {(trace_s - fwd_s) / gemm_s:4.2f}x the GEMM]"
    )
    if base is not None:
        old = before(base, sub, n, repeat)
        print(
            f"         --against tree: trace {old:6.2f} s, ratio {old / gemm_s:4.2f}x the GEMM; now {old / trace_s:4.2f}x faster"
        )


def before(base, sub: Subject, n: int, repeat: int, space: str = "encodings", kw: dict | None = None) -> float:
    """Warm trace time with another tokentrail source tree (``--against``), same model object, same inputs
    (``kw``: the options, default the residual sites in ``space``)."""
    adapter = base.adapters.adapter_for(sub.adapter.model)
    spaces = base.spaces.SpaceCache(adapter)
    ids = sub.ids(n)
    toks = [str(i) for i in ids.tolist()]

    def run():
        return base.analysis.analyse(
            adapter,
            spaces,
            ids,
            text=" ".join(toks),
            tokens=toks,
            special=[False] * n,
            label=lambda vs: {int(v): str(v) for v in vs},
            model_name=sub.name,
            **as_options(base.analysis.analyse, kw or residual_kw(space)),
        )

    run()
    return timed(run, repeat)[0]


def load_base(folder: str):
    """Import ``folder``/src/tokentrail as a separate package (``tokentrail_base``) for same-process timings."""
    import importlib
    import shutil
    import sys
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(Path(folder) / "src" / "tokentrail", tmp / "tokentrail_base")
    sys.path.insert(0, str(tmp))
    return importlib.import_module("tokentrail_base"), [
        importlib.import_module(f"tokentrail_base.{m}") for m in ("adapters", "spaces", "analysis")
    ]


# ---- 2. the peer's standard route -----------------------------------------------------------------
@torch.no_grad()
def peer_route(a, ids: torch.Tensor) -> dict:
    """normalise W_E and the residuals once, one matmul per site and layer, topk, rank, overlap."""
    acts = capture(a, ids)  # the model's own forward pass and residuals (run_with_cache)
    E = a.embedding_table().float()
    E = E / E.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # zero rows (e.g. <pad>) get cosine 0, not NaN
    own = ids[:, None]
    e = acts.embedded / acts.embedded.norm(dim=-1, keepdim=True)
    prev0 = torch.topk(e @ E.T, OVERLAP_K, dim=1).indices
    out = {"rank": [], "top": [], "overlap": []}
    for site in SITES:
        prev = prev0
        for r in acts.site(site):  # (n, d) per layer
            s = (r / r.norm(dim=-1, keepdim=True)) @ E.T  # (n, V)
            top = torch.topk(s, OVERLAP_K, dim=1).indices
            out["rank"].append((s > s.gather(1, own)).sum(1))
            out["top"].append(top[:, :K])
            out["overlap"].append((top[:, :, None] == prev[:, None, :]).any(-1).sum(-1))
            prev = top
    return {k: torch.stack(v).view(len(SITES), a.n_layers, len(ids), *v[0].shape[1:]) for k, v in out.items()}


def ours_in(trail, space: str) -> dict:
    vs = [trail.view(s, space, "cosine") for s in SITES]
    return {
        "rank": torch.from_numpy(np.stack([v.rank for v in vs])),
        "top": torch.from_numpy(np.stack([v.top_ids for v in vs])),
        "overlap": torch.from_numpy(np.stack([v.overlap for v in vs]).astype(np.int64)),
    }


def disagreements(sub: Subject, ids, ours: dict, peer: dict) -> tuple[int, int]:
    """(near-ties, unexplained) among queries where ours and the peer differ, judged in float64."""
    acts = capture(sub.adapter, ids)
    E = sub.adapter.embedding_table().double()
    diff = (ours["rank"] != peer["rank"]) | (ours["top"] != peer["top"]).any(-1) | (ours["overlap"] != peer["overlap"])
    ties = bad = 0
    for i, layer, t in diff.nonzero().tolist():
        r = acts.site(SITES[i])[layer, t].double()
        s = (E @ r) / (E.norm(dim=-1) * r.norm()).clamp_min(1e-300)
        own = int(ids[t])
        ok = True
        for res in (ours, peer):
            rank = int(res["rank"][i, layer, t])
            ok &= int((s > s[own] + TIE_TOL).sum()) <= rank <= int((s > s[own] - TIE_TOL).sum())
            best = torch.sort(s, descending=True).values
            ok &= float((s[res["top"][i, layer, t]] - best[:K]).abs().max()) <= TIE_TOL
        if ours["overlap"][i, layer, t] != peer["overlap"][i, layer, t]:
            # a set can differ only through a near-tie at the top-100 boundary, here or in the previous set
            p = (acts.site(SITES[i])[layer - 1, t] if layer else acts.embedded[t]).double()
            ps = torch.sort((E @ p) / (E.norm(dim=-1) * p.norm()).clamp_min(1e-300), descending=True).values
            ok &= min(float(best[OVERLAP_K - 1] - best[OVERLAP_K]), float(ps[OVERLAP_K - 1] - ps[OVERLAP_K])) <= TIE_TOL
        ties, bad = (ties + 1, bad) if ok else (ties, bad + 1)
    return ties, bad


def peer(sub: Subject, n: int, repeat: int, base=None) -> int:
    ids = sub.ids(n)
    sub.analyse(ids, **residual_kw("embeddings"))
    ours_s, trail = timed(lambda: sub.analyse(ids, **residual_kw("embeddings")), repeat)
    peer_s, res = timed(lambda: peer_route(sub.adapter, ids), repeat)
    enc_s, _ = timed(lambda: sub.analyse(ids, **residual_kw("encodings")), 1)
    ties, bad = disagreements(sub, ids, ours_in(trail, "embeddings"), res)
    same = (
        "the same space (W_E has no position or norm here)"
        if sub.adapter.embedding_norm() is None
        else "peer NOT exact for this post-LN encoder"
    )
    print(
        f"  peer   {n} tokens: ours (embeddings) {ours_s:6.2f} s   peer route {peer_s:6.2f} s   ours {peer_s / ours_s:4.2f}x faster (goal >= 2x)   "
        f"| ours exact encodings {enc_s:6.2f} s ({same})   disagreements: {ties} at fp32 near-ties, {bad} unexplained"
    )
    # the most any exact route could gain over the peer here: it must at least run the
    # forward pass and compute every similarity (one product of all queries with W_E)
    Q, a = (len(SITES) * sub.adapter.n_layers + 1) * n, sub.adapter
    gemm_s = product_seconds(a, Q, repeat)
    fwd_s, _ = timed(lambda: capture(a, ids), repeat)
    print(
        f"         bound: forward pass {fwd_s:.2f} s + one product of the {Q} queries {gemm_s:.2f} s = {fwd_s + gemm_s:.2f} s: "
        f"a route doing nothing else would be {peer_s / (fwd_s + gemm_s):4.2f}x faster than the peer; ours is {ours_s / (fwd_s + gemm_s):4.2f}x that minimum"
    )
    if base is not None:
        old = before(base, sub, n, repeat, "embeddings")
        print(
            f"         --against tree: embeddings {old:6.2f} s: the peer route was {old / peer_s:4.2f}x that tree's speed"
        )
    return bad


# ---- 3. scale in tokens ---------------------------------------------------------------------------
def release() -> None:
    """Give freed memory back before a peak is reset: collect cycles, and return glibc's free
    heap pages (kept otherwise, they would count in the next length's peak)."""
    import gc

    from tokentrail.corpus.compute import release_freed_memory

    gc.collect()
    release_freed_memory()


def memory_bound(sub: Subject) -> tuple[float, float, float]:
    """(weights, one V x d float32 table, the chunk) in MiB: what issue 13 bounds the peak by."""
    a = sub.adapter
    weights = sum(p.numel() * p.element_size() for p in a.model.parameters())
    return weights / 2**20, a.vocab_size * a.d_model * 4 / 2**20, WORKING_BYTES / 2**20


def scale(sub: Subject, lengths: list[int], base=None) -> None:
    # every site a one-stack model has (an older tree, timed with --against, knows no cross sites)
    everything = dict(
        sites=(*RESIDUAL_SITES, HEAD_SITE),
        space_kinds=ALL_SPACES,
        similarities=("cosine",),
        k=K,
        overlap_k=OVERLAP_K,
        lens=True,
    )
    with torch.no_grad():  # every weight paged in: resident weights are the model's, not the trace's
        sum(float(p.float().sum()) for p in sub.adapter.model.parameters())
    sub.spaces.release_scratch()  # the traces' scratch block counts in the working memory, not here
    release()
    before_rss = rss_mib()
    sub.analyse(sub.ids(10), **everything)  # builds every head space (cold)
    warm10, _ = timed(lambda: sub.analyse(sub.ids(10), **everything), 1)
    print(f"  everything-trace (site=all, space=all, lens) 10 tokens warm: {warm10:6.2f} s (goal < 5 s)")
    weights, table, chunk = memory_bound(sub)
    print(
        f"  memory (MiB) over the loaded model and process ({before_rss:.0f} MiB, every weight resident): peak = results + head-space cache + working; "
        f"issue 13's bound: weights {weights:.0f} + one V x d table {table:.0f} + chunk {chunk:.0f} = {weights + table + chunk:.0f}"
    )
    times = []
    for n in lengths:
        release()
        reset = reset_peak()
        s, trail = timed(lambda n=n: sub.analyse(sub.ids(n), **everything), 1)
        times.append(s)
        peak = rss_mib("VmHWM") - before_rss if reset else float("nan")
        held, cache = held_bytes(trail) / 2**20, sub.spaces.nbytes / 2**20
        del trail
        acts = capture(sub.adapter, sub.ids(n))  # after the peak: what the forward pass hands the views
        captured = (held_bytes(acts) - acts.attentions.nbytes) / 2**20  # the patterns are counted in the results
        del acts
        # a streamed trace (long texts) holds one layer's activations at a time, a captured one every layer's
        streamed = streams(sub.adapter, as_options(analyse, everything)["options"], n)
        held_acts, how = (
            (captured / sub.adapter.n_layers, "streamed: one layer's activations")
            if streamed
            else (captured, "captured activations")
        )
        print(
            f"  everything-trace {n:5d} tokens: {s:8.2f} s   load {os.getloadavg()[0]:.1f}   peak +{peak:5.0f}   results {held:5.0f}   "
            f"head-space cache {cache:5.0f}   working {peak - held - cache:5.0f} ({how} {held_acts:4.0f}, the rest {peak - held - cache - held_acts:4.0f})"
        )
    if len(lengths) > 1:
        slope = np.polyfit(np.log(lengths), np.log(times), 1)[0]
        print(f"  fitted exponent (time ~ tokens^e): e = {slope:.2f}")
    if base is not None:  # after the peaks: the other tree's space cache is its own
        old = before(base, sub, 10, 1, kw=everything)
        print(f"  --against tree: everything-trace 10 tokens warm {old:6.2f} s; now {old / warm10:4.2f}x faster")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short texts and a short scale run")
    ap.add_argument("--models", default="minilm,smollm2,roberta-base-shaped")
    ap.add_argument(
        "--scale",
        default=None,
        help='comma-separated lengths for the SmolLM2 everything-trace (default 64,256,1024; "" for none)',
    )
    ap.add_argument("--repeat", type=int, default=2, help="best of N for each timing")
    ap.add_argument(
        "--against",
        default=None,
        help="another checkout (e.g. a git worktree of an older commit): its warm traces are timed in this process too",
    )
    args = ap.parse_args()
    base = None
    if args.against:
        _, mods = load_base(args.against)
        base = argparse.Namespace(adapters=mods[0], spaces=mods[1], analysis=mods[2])
    floor_n, peer_ns = (20, [40]) if args.quick else (100, [40, 170])
    lengths = [
        int(x)
        for x in (args.scale if args.scale is not None else ("16,64" if args.quick else "64,256,1024")).split(",")
        if x
    ]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; 1-min load at start {os.getloadavg()[0]:.1f} (shared machine: compare within a run)"
    )
    bad = 0
    for name in args.models.split(","):
        sub = Subject(name)
        a = sub.adapter
        print(f"\n{name}: L={a.n_layers}, d={a.d_model}, V={a.vocab_size}; top-{K}, overlap@{OVERLAP_K}, cosine")
        floor(sub, floor_n, args.repeat, base)
        for n in peer_ns:
            bad += peer(sub, n, args.repeat, base)
        if name == "smollm2" and lengths:
            scale(sub, lengths, base)
    print(f"\n1-min load at end {os.getloadavg()[0]:.1f}")
    if bad:
        raise SystemExit(f"{bad} disagreements beyond fp32 near-ties")


if __name__ == "__main__":
    main()
