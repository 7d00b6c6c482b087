"""Does a lower-precision product pay on this CPU? One scoring block in fp32, bf16 and fp16.

    python benchmarks/bench_dtypes.py                # MiniLM and SmolLM2 (bundled)
    python benchmarks/bench_dtypes.py --models minilm --repeat 5

Every exact similarity tokentrail reports comes out of ``(queries x d) @ (d x V)``
products in fp32 (SPEC "Exactness and cost"). A cheaper first pass in bf16 could only
screen candidates, to be settled exactly in fp32 afterwards, and it pays only where the
CPU runs bf16 products faster than fp32 ones: on AVX2 alone (Zen 3) they ran 8x slower
(docs/benchmarks.md, round 3); with AVX-512 BF16 or AMX they may not. This prints, for
one block of the size the analysis scores at once (``budget.BLOCK_BYTES`` of fp32
similarities) against each model's real unit-length embedding table:

- the best-of-N time of the product in fp32, bf16 and fp16, its GFLOP/s and its ratio
  to fp32, all in one process;
- the largest difference between a bf16 similarity and the fp32 one: the margin a bf16
  screen would have to leave around the k-th value and the token's own similarity.

The CPU's relevant flags (avx512_bf16, amx_bf16, avx512_fp16) head the output.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import tokentrail as tt
from tokentrail.engine.budget import BLOCK_BYTES

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
MODELS = ("minilm", "smollm2")


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    line = next((l for l in text.splitlines() if l.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    name = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "unknown CPU")
    return f"{name}: " + ", ".join(f"{f} {'yes' if f in have else 'no'}" for f in FLAGS)


def best_seconds(fn, repeat: int) -> float:
    fn()  # warm: first-touch pages, kernel selection
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(name: str, repeat: int) -> None:
    table = tt.load(name).adapter.embedding_table().detach().float()  # (V, d)
    V, d = table.shape
    rows = BLOCK_BYTES // (4 * V)  # queries per scoring block
    g = torch.Generator().manual_seed(0)
    unit = table / table.norm(dim=1, keepdim=True)
    queries = unit[torch.randint(0, V, (rows,), generator=g)] + 0.3 * torch.randn(rows, d, generator=g) / d**0.5
    queries = queries / queries.norm(dim=1, keepdim=True)  # residual-like: near a row, not on it
    flops = 2 * rows * d * V
    exact = queries @ unit.T
    print(f"{name}: one block of {rows} queries x d {d} x V {V:,} ({flops / 1e9:.1f} GFLOP)")
    fp32 = None
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        q, w = queries.to(dtype), unit.to(dtype)
        out = torch.empty(rows, V, dtype=dtype)
        seconds = best_seconds(lambda q=q, w=w, out=out: torch.mm(q, w.T, out=out), repeat)
        fp32 = fp32 or seconds
        err = (out.float() - exact).abs().max().item()
        label = str(dtype).removeprefix("torch.")
        print(
            f"  {label:8s} {seconds * 1e3:8.1f} ms  {flops / seconds / 1e9:6.0f} GFLOP/s  {fp32 / seconds:5.2f}x fp32's speed  largest |s - s_fp32| {err:.1e}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--repeat", type=int, default=7, help="best of this many timed products (default 7)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = ap.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise SystemExit(
            f"bench_dtypes: {f'unknown model {unknown[0]!r}' if unknown else 'no model named'}; choose from {', '.join(MODELS)}"
        )
    if args.repeat < 1 or (args.threads is not None and args.threads < 1):
        raise SystemExit("bench_dtypes: --repeat and --threads must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(cpu_flags())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in names:
        measure(name, args.repeat)


if __name__ == "__main__":
    main()
