"""tokentrail's analysis against the naive way, on a roberta-base-shaped random model.

    python benchmarks/bench_trace.py            # 64 tokens, 12 layers (minutes: the naive side is slow)
    python benchmarks/bench_trace.py --quick    # a small model, a smoke run in seconds

Both sides compute, for every token, layer and site (attn_resid, layer_out), the cosine
similarity to all V rows of the ``encodings`` space at the token's position, the token's
rank, its top-15 list and overlap@100 with the previous layer (layer 0: with the original
encoding's top-100):

* fast:  ``tokentrail.analysis.bare.analyse`` (factorised spaces, one pass per query for rank);
* naive: per token and layer, build the (V, d) matrix LN(W_E + W_P[p] + W_T[0]) with the
  model's own LayerNorm module, compute all similarities, fully sort (stable: ties by
  lower id). It runs the model itself and uses nothing from tokentrail.

Each side runs in a fresh subprocess, so its peak resident memory is its own; the peak is
reset (/proc/self/clear_refs) after the model is built, so "phase peak" is the high-water
mark while the side runs, model included. Results must agree: where fp32 sides differ, the
script recomputes those queries in float64 and accepts a difference only where the exact
similarities are within 1e-6 (a near-tie that fp32 cannot order). A random sample of
queries is checked against float64 the same way even when both sides agree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SITES = ("attn_resid", "layer_out")
K, OVERLAP_K = 15, 100
TIE_TOL = 1e-6

FULL = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
)
QUICK = dict(
    vocab_size=8000,
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=1024,
    max_position_embeddings=514,
)


# ---- shared set-up ---------------------------------------------------------------------------
def build(shape: dict, seed: int):
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(seed)
    config = RobertaConfig(**shape, attn_implementation="eager")
    return RobertaModel(config).eval()


def make_ids(vocab: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(3, vocab, (n,), generator=g)  # no <pad> (id 1): it would take position padding_idx
    ids[0], ids[-1] = 0, 2  # <s> ... </s>
    return ids


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


# ---- the two sides ---------------------------------------------------------------------------------
def run_fast(model, ids: torch.Tensor) -> tuple[dict, dict]:
    from tokentrail.adapters import adapter_for
    from tokentrail.analysis.bare import analyse
    from tokentrail.engine.space_cache import SpaceCache
    from tokentrail.spec.options import TraceOptions

    adapter = adapter_for(model)
    spaces = SpaceCache(adapter)
    tokens = [str(i) for i in ids.tolist()]

    def once():
        return analyse(
            adapter,
            spaces,
            ids,
            text=" ".join(tokens),
            tokens=tokens,
            special=[False] * len(ids),
            label=lambda vs: {int(v): str(v) for v in vs},
            model_name="roberta-base-shaped (random)",
            options=TraceOptions(
                sites=tuple(SITES), spaces=("encodings",), similarities=("cosine",), k=K, overlap_k=OVERLAP_K
            ),
        )

    t0 = time.perf_counter()
    trail = once()  # cold: builds the space's V x d tables
    cold = time.perf_counter() - t0
    peak_cold = _rss_kb("VmHWM")
    t0 = time.perf_counter()
    trail = once()  # warm: the space is cached, as in the app or a second text
    warm = time.perf_counter() - t0
    views = [trail.view(s, "encodings", "cosine") for s in SITES]
    out = {
        "rank": np.stack([v.rank for v in views]),  # (S, L, n)
        "top": np.stack([v.top_ids for v in views]),  # (S, L, n, K)
        "overlap": np.stack([v.overlap for v in views]).astype(np.int64),
        "self_sim": np.stack([v.self_sim for v in views]).astype(np.float64),
        "origin_top": views[0].origin_top_ids,  # (n, K)
    }
    return out, {"seconds": cold, "warm_seconds": warm, "peak_cold_kb": peak_cold}


@torch.no_grad()
def naive_query(R: torch.Tensor, r: torch.Tensor, own: int):
    """cosine of r with every row of R, then a full stable sort: (own sim, rank, order)."""
    s = (R @ r) / (R.norm(dim=1) * r.norm())
    order = torch.sort(s, descending=True, stable=True).indices  # ties keep id order
    return s, s[own].item(), int((s > s[own]).sum()), order


@torch.no_grad()
def site_vectors(model, ids: torch.Tensor, dtype=torch.float32) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """e (n, d) and, per site, L tensors (n, d), read from the model's own forward pass."""
    attn = []
    hooks = [
        lay.attention.output.dense.register_forward_hook(lambda m, a, o: attn.append(o[0]))
        for lay in model.encoder.layer
    ]
    try:
        out = model(input_ids=ids[None], output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    hs = [h[0].to(dtype) for h in out.hidden_states]
    L = len(hs) - 1
    return hs[0], {"attn_resid": [hs[l] + attn[l].to(dtype) for l in range(L)], "layer_out": hs[1:]}


@torch.no_grad()
def vocab_matrix(model, position: int, dtype=torch.float32) -> torch.Tensor:
    """LN(W_E + W_P[p] + W_T[0]) with the model's own LayerNorm module: (V, d)."""
    emb = model.embeddings
    x = emb.word_embeddings.weight + emb.position_embeddings.weight[position] + emb.token_type_embeddings.weight[0]
    if dtype == torch.float32:
        return emb.LayerNorm(x)
    return torch.nn.functional.layer_norm(
        x.to(dtype), x.shape[-1:], emb.LayerNorm.weight.to(dtype), emb.LayerNorm.bias.to(dtype), emb.LayerNorm.eps
    )


@torch.no_grad()
def run_naive(model, ids: torch.Tensor) -> tuple[dict, dict]:
    t0 = time.perf_counter()
    emb = model.embeddings
    positions = emb.create_position_ids_from_input_ids(ids[None], emb.padding_idx)[0].tolist()  # the model's rule
    e, sites = site_vectors(model, ids)
    n, L, S = len(ids), len(sites["layer_out"]), len(SITES)
    out = {
        "rank": np.zeros((S, L, n), np.int64),
        "top": np.zeros((S, L, n, K), np.int64),
        "overlap": np.zeros((S, L, n), np.int64),
        "self_sim": np.zeros((S, L, n)),
        "origin_top": np.zeros((n, K), np.int64),
    }
    for t in range(n):
        own = int(ids[t])
        prev = [None] * S
        for l in range(L):
            R = vocab_matrix(model, positions[t])  # (V, d), rebuilt per token and layer
            if l == 0:
                _, _, _, order = naive_query(R, e[t], own)
                out["origin_top"][t] = order[:K].numpy()
                prev = [set(order[:OVERLAP_K].tolist())] * S
            for i, site in enumerate(SITES):
                _, s_own, rank, order = naive_query(R, sites[site][l][t], own)
                top = order[:OVERLAP_K].tolist()
                out["rank"][i, l, t], out["self_sim"][i, l, t] = rank, s_own
                out["top"][i, l, t] = top[:K]
                out["overlap"][i, l, t] = len(prev[i] & set(top))
                prev[i] = set(top)
    return out, {"seconds": time.perf_counter() - t0}


# ---- one side in this (fresh) process ---------------------------------------------------------------------
def phase(args) -> None:
    torch.set_num_threads(args.threads) if args.threads else None
    shape = _shape(args)
    model = build(shape, args.seed)
    ids = make_ids(shape["vocab_size"], args.tokens, args.seed)
    rss_model = _rss_kb("VmRSS")
    reset = _reset_peak()
    load_before = os.getloadavg()[0]
    out, info = (run_fast if args.phase == "fast" else run_naive)(model, ids)
    info.update(
        load=(load_before, os.getloadavg()[0]),
        rss_model_kb=rss_model,
        peak_kb=_rss_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        peak_is_phase_only=reset,
        threads=torch.get_num_threads(),
    )
    np.savez(args.out, **out)
    Path(args.out).with_suffix(".json").write_text(json.dumps(info))


def _shape(args) -> dict:
    shape = dict(QUICK if args.quick else FULL)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    return shape


def spawn(name: str, args, folder: Path) -> tuple[dict, dict]:
    out = folder / f"{name}.npz"
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        name,
        "--out",
        str(out),
        "--tokens",
        str(args.tokens),
        "--seed",
        str(args.seed),
    ]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--layers", str(args.layers)] if args.layers else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    subprocess.run(cmd, check=True)
    data = np.load(out)
    return {k: data[k] for k in data.files}, json.loads(out.with_suffix(".json").read_text())


# ---- checking against float64 ---------------------------------------------------------------------------
class Exact:
    """float64 similarities of chosen queries, for judging fp32 disagreements."""

    def __init__(self, args):
        self.model = build(_shape(args), args.seed).double()
        self.ids = make_ids(self.model.config.vocab_size, args.tokens, args.seed)
        emb = self.model.embeddings
        self.positions = emb.create_position_ids_from_input_ids(self.ids[None], emb.padding_idx)[0].tolist()
        self.e, self.sites = site_vectors(self.model, self.ids, torch.float64)
        self._rows: dict[int, torch.Tensor] = {}

    def sims(self, site: int | None, layer: int, t: int) -> torch.Tensor:
        """(V,) float64 cosine; site None: the original encoding e_t."""
        p = self.positions[t]
        if p not in self._rows:
            self._rows[p] = vocab_matrix(self.model, p, torch.float64)
        R = self._rows[p]
        r = self.e[t] if site is None else self.sites[SITES[site]][layer][t]
        return (R @ r) / (R.norm(dim=1) * r.norm())

    def rank_ok(self, s: torch.Tensor, own: int, rank: int) -> bool:
        """rank lies between the exact counts with and without the rows within TIE_TOL of own."""
        lo, hi = int((s > s[own] + TIE_TOL).sum()), int((s > s[own] - TIE_TOL).sum())
        return lo <= rank <= hi

    @staticmethod
    def top_ok(s: torch.Tensor, top: np.ndarray) -> float:
        """Largest gap between the returned list's exact similarities and the exact sorted ones."""
        best = torch.sort(s, descending=True).values[: len(top)]
        return float((s[torch.as_tensor(top)] - best).abs().max())

    @staticmethod
    def boundary_gap(s: torch.Tensor) -> float:
        v = torch.sort(s, descending=True).values
        return float(v[OVERLAP_K - 1] - v[OVERLAP_K])


def check(fast: dict, naive: dict, args) -> dict:
    S, L, n = fast["rank"].shape
    ids = make_ids(_shape(args)["vocab_size"], args.tokens, args.seed).numpy()
    d_rank = fast["rank"] != naive["rank"]
    d_top = (fast["top"] != naive["top"]).any(-1)
    d_ov = fast["overlap"] != naive["overlap"]
    d_origin = (fast["origin_top"] != naive["origin_top"]).any(-1)
    report = {
        "queries": int(S * L * n),
        "rank_differs": int(d_rank.sum()),
        "top15_differs": int(d_top.sum()),
        "overlap_differs": int(d_ov.sum()),
        "origin_top15_differs": int(d_origin.sum()),
        "self_sim_max_abs_diff": float(np.abs(fast["self_sim"] - naive["self_sim"]).max()),
        "rank_max_abs_diff": int(np.abs(fast["rank"] - naive["rank"]).max()),
    }
    # every disagreement, plus a random sample of agreeing queries, against float64
    g = np.random.default_rng(args.seed)
    sample = {tuple(x) for x in np.argwhere(d_rank | d_top | d_ov)}
    sample |= {(int(g.integers(S)), int(g.integers(L)), int(g.integers(n))) for _ in range(args.verify)}
    exact = Exact(args)
    worst_top, bad, notes = 0.0, [], []
    for i, l, t in sorted(sample):
        s = exact.sims(i, l, t)
        for name, res in (("fast", fast), ("naive", naive)):
            if not exact.rank_ok(s, int(ids[t]), int(res["rank"][i, l, t])):
                bad.append(f"{name} rank at site={SITES[i]} layer={l} token={t}")
            gap = exact.top_ok(s, res["top"][i, l, t])
            worst_top = max(worst_top, gap)
            if gap > TIE_TOL:
                bad.append(f"{name} top-{K} at site={SITES[i]} layer={l} token={t} (off by {gap:.2e})")
        if d_ov[i, l, t]:
            prev = exact.sims(i, l - 1, t) if l else exact.sims(None, 0, t)
            gap = min(exact.boundary_gap(s), exact.boundary_gap(prev))
            where = f"overlap@{OVERLAP_K} at site={SITES[i]} layer={l} token={t}"
            if gap > TIE_TOL:
                bad.append(f"{where}: no near-tie at the top-{OVERLAP_K} boundary (gap {gap:.2e})")
            else:
                notes.append(
                    f"{where}: fast {fast['overlap'][i, l, t]}, naive {naive['overlap'][i, l, t]}; "
                    f"the exact similarities at places {OVERLAP_K} and {OVERLAP_K + 1} differ by {gap:.1e}"
                )
        for name, d in (("rank", d_rank), (f"top-{K}", d_top)):
            if d[i, l, t]:
                notes.append(
                    f"{name} at site={SITES[i]} layer={l} token={t}: fast and naive differ; both within {TIE_TOL:g} of exact"
                )
    for t in np.flatnonzero(d_origin):
        s = exact.sims(None, 0, int(t))
        if max(exact.top_ok(s, fast["origin_top"][t]), exact.top_ok(s, naive["origin_top"][t])) > TIE_TOL:
            bad.append(f"origin top-{K} at token {t}")
    report.update(checked_in_float64=len(sample), worst_top_gap=worst_top, unexplained=bad, explained=notes)
    return report


# ---- main -------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tokens", type=int, default=None, help="input length (default 64; 16 with --quick)")
    ap.add_argument("--layers", type=int, default=None, help="model depth (default 12; 4 with --quick)")
    ap.add_argument("--quick", action="store_true", help="small model (V=8000, d=256) for a smoke run")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verify", type=int, default=32, help="agreeing queries also checked in float64")
    ap.add_argument("--phase", choices=["fast", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.tokens = args.tokens or (16 if args.quick else 64)
    if args.phase:
        return phase(args)

    shape = _shape(args)
    print(
        f"model: random RobertaModel {shape}; {args.tokens} tokens; sites {', '.join(SITES)}; space encodings; "
        f"cosine; top-{K}, overlap@{OVERLAP_K}"
    )
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        fast, f_info = spawn("fast", args, Path(tmp))
        print(f"fast  (tokentrail.analyse): {f_info['seconds']:8.2f} s cold, {f_info['warm_seconds']:.2f} s warm")
        naive, n_info = spawn("naive", args, Path(tmp))
        print(f"naive (rebuild + full sort): {n_info['seconds']:8.2f} s")
    print(
        f"1-min load average (start -> end of each side): fast {f_info['load'][0]:.1f} -> {f_info['load'][1]:.1f}, "
        f"naive {n_info['load'][0]:.1f} -> {n_info['load'][1]:.1f}; other processes share the CPUs when it is above 0"
    )
    print(
        f"speed-up: {n_info['seconds'] / f_info['seconds']:.1f}x cold, {n_info['seconds'] / f_info['warm_seconds']:.1f}x warm "
        f"({f_info['threads']} torch threads)"
    )
    for name, info in (("fast", f_info), ("naive", n_info)):
        kind = "phase peak RSS" if info["peak_is_phase_only"] else "process peak RSS"
        print(
            f"{name:5s} {kind}: {info['peak_kb'] / 1024:7.0f} MiB  (model alone: {info['rss_model_kb'] / 1024:.0f} MiB, "
            f"+{(info['peak_kb'] - info['rss_model_kb']) / 1024:.0f} MiB)"
        )
    rep = check(fast, naive, args)
    print(
        f"agreement over {rep['queries']} queries: rank differs {rep['rank_differs']} (max |diff| {rep['rank_max_abs_diff']}), "
        f"top-{K} differs {rep['top15_differs']}, overlap@{OVERLAP_K} differs {rep['overlap_differs']}, "
        f"origin top-{K} differs {rep['origin_top15_differs']}; self_sim max |diff| {rep['self_sim_max_abs_diff']:.1e}"
    )
    print(
        f"float64 check of {rep['checked_in_float64']} queries (all disagreements + {args.verify} sampled): "
        f"worst top-{K} similarity gap {rep['worst_top_gap']:.1e}; unexplained: {len(rep['unexplained'])}"
    )
    for note in rep["explained"]:
        print("  near-tie: " + note)
    if rep["unexplained"]:
        print("\n".join("  " + b for b in rep["unexplained"][:20]))
        sys.exit(1)


if __name__ == "__main__":
    main()
