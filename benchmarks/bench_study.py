"""Corpus study throughput and memory, against a naive loop of ``tt.trace``.

    python benchmarks/bench_study.py --model minilm --limit 200
    python benchmarks/bench_study.py --model smollm2 --limit 50 --threads 1

Over the first ``--limit`` sentences of the UD English EWT dev split (../shared/data,
outside the repository; the script says so and stops when it is absent):

* study: ``tokentrail study`` (batches, Parquet parts, manifest, anisotropy sample),
  tokens analysed per second (a token = one text token at every layer of one site),
  timed from the moment its model is loaded;
* naive: ``tt.trace(text)`` for each sentence in one loop, in the same process as the
  study run, with the same site, space and overlap k; tokens per second;
* floor: the vocabulary GEMM alone for the same work, in the same process: one
  ``(queries x d) @ (d x V)`` product per chunk, queries = (sites x layers + 1) per token
  (the original encodings score too), at the study's chunk size and at 4x and 16x it
  (does batching the product across more texts help?); tokens per second;
* memory: the study's peak RSS in a fresh process as the corpus doubles
  (``--memory-limit`` sentences, 2x, 4x), and the slope in MB per doubling.

Each measurement runs in its own subprocess so peak RSS is its own. ``--threads`` sets
torch's intra-op threads (on a busy shared CPU, 1 thread is often much faster).
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

UD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ud-english-ewt" / "en_ewt-ud-dev.conllu"


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import tokentrail as tt
    from tokentrail.corpus.inputs import Skipped, records

    loaded = tt.load(args.model)
    out: dict = {"model": args.model, "limit": args.limit, "threads": torch.get_num_threads(), "repeat": args.repeat}
    best = lambda old, new: new if old is None or new["tokens_per_s"] > old["tokens_per_s"] else old  # noqa: E731
    texts = [r.text for r in records(args.corpus, skipped=Skipped(), limit=args.limit)]
    # rounds interleave the sides, and each keeps its best round: on a shared machine the
    # load changes by the minute, and the best round is the one least disturbed by it
    for _ in range(args.repeat):
        if args.side in ("study", "both"):
            with tempfile.TemporaryDirectory() as d:
                started = []  # the clock starts when the study's model is loaded (the loop's is loaded already)
                s = tt.study(
                    args.corpus,
                    loaded.name,
                    Path(d) / "s",
                    limit=args.limit,
                    batch=args.batch,
                    on_start=lambda _, started=started: started.append(time.perf_counter()),
                )
                dt = time.perf_counter() - started[0]
                out["study"] = best(
                    out.get("study"),
                    {
                        "texts": s.manifest["texts"],
                        "tokens": s.manifest["tokens"],
                        "seconds": dt,
                        "tokens_per_s": s.manifest["tokens"] / dt,
                    },
                )
        if args.side in ("naive", "both"):
            t = time.perf_counter()
            n = 0
            for text in texts:
                n += tt.trace(text, loaded, overlap_k=100).n_tokens
            dt = time.perf_counter() - t
            out["naive"] = best(
                out.get("naive"), {"texts": len(texts), "tokens": n, "seconds": dt, "tokens_per_s": n / dt}
            )
        if args.side in ("floor", "both"):
            fl = gemm_floor(loaded, out.get("study", {}).get("tokens") or 1000)
            old = out.get("floor")
            out["floor"] = fl if old is None else {**fl, **{k: best(old[k], fl[k]) for k in ("x1", "x4", "x16")}}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def gemm_floor(loaded, tokens: int, sites: int = 1) -> dict:
    """Tokens per second of the vocabulary product alone for ``tokens`` tokens: (sites x
    L + 1) queries each against all V rows, in chunks of the analysis's size and larger."""
    import torch

    from tokentrail.engine.budget import BLOCK_BYTES

    a = loaded.adapter
    V, d, L = a.vocab_size, a.d_model, a.n_layers
    queries = tokens * (sites * L + 1)
    rows = torch.randn(V, d)
    step = max(1, BLOCK_BYTES // (V * 4))  # analysis.residual.residual_views' chunk: one float per (query, row)
    out = {"queries": queries, "vocab": V, "d": d, "chunk": step}
    for scale in (1, 4, 16):
        q = torch.randn(step * scale, d)
        rows @ q[:8].T  # warm up
        t = time.perf_counter()
        done = 0
        while done < queries:
            m = min(step * scale, queries - done)
            torch.mm(q[:m], rows.T)
            done += m
        dt = time.perf_counter() - t
        out[f"x{scale}"] = {"seconds": dt, "tokens_per_s": tokens / dt, "gflops": 2 * queries * V * d / dt / 1e9}
    return out


def run_child(argv: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--limit", type=int, default=200, help="sentences for the speed comparison")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="speed rounds (study, loop, floor interleaved); the best of each is reported",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--corpus", default=str(UD))
    ap.add_argument("--no-memory", action="store_true", help="skip the doubling-corpus memory runs")
    ap.add_argument("--no-speed", action="store_true", help="skip the study/loop/floor speed comparison")
    ap.add_argument(
        "--memory-limit", type=int, default=100, help="sentences of the 1x corpus for the memory runs (then 2x, 4x)"
    )
    ap.add_argument("--side", default="both", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if not Path(args.corpus).exists():
        sys.exit(
            f"no corpus at {args.corpus}: the UD English EWT dev split lives beside the project in ../shared/data/"
        )
    common = [
        "--model",
        args.model,
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
        "--corpus",
        args.corpus,
    ]
    rounds = ["--repeat", str(args.repeat)]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    if not args.no_speed:
        speed_report(run_child([*common, *rounds, "--limit", str(args.limit), "--side", "both"]), args.model)
    if not args.no_memory:
        memory_report(common, args.memory_limit)


def speed_report(speed: dict, model: str) -> None:
    st, nv = speed["study"], speed["naive"]
    print(
        f"model {model}, {st['texts']} sentences, {st['tokens']} tokens, torch threads {speed['threads']}, best of {speed['repeat']} interleaved rounds"
    )
    print(f"study : {st['tokens_per_s']:8.1f} tokens/s ({st['seconds']:.1f} s)")
    print(f"naive : {nv['tokens_per_s']:8.1f} tokens/s ({nv['seconds']:.1f} s, tt.trace per sentence)")
    print(f"ratio : {st['tokens_per_s'] / nv['tokens_per_s']:.2f}x")
    fl = speed["floor"]
    print(f"floor : GEMM alone, {fl['queries']:,} queries x {fl['vocab']:,} rows x d={fl['d']} (same process):")
    for scale in (1, 4, 16):
        f = fl[f"x{scale}"]
        print(
            f"        chunk {fl['chunk'] * scale:6d} queries: {f['tokens_per_s']:8.1f} tokens/s ({f['gflops']:.0f} GFLOP/s)"
        )
    best = max(fl[f"x{s}"]["tokens_per_s"] for s in (1, 4, 16))
    print(
        f"        study at {st['tokens_per_s'] / best:.0%} of the fastest GEMM-only rate, the trace loop at {nv['tokens_per_s'] / best:.0%}"
    )


def memory_report(common: list[str], base: int) -> None:
    peaks = []
    for limit in (base, 2 * base, 4 * base):
        m = run_child([*common, "--limit", str(limit), "--side", "study", "--repeat", "1"])
        peaks.append(m["peak_rss_mb"])
        print(
            f"memory: {m['study']['texts']:5d} sentences {m['study']['tokens']:6d} tokens -> peak RSS {m['peak_rss_mb']:.0f} MB ({m['study']['tokens_per_s']:.1f} tokens/s)"
        )
    slope = (peaks[2] - peaks[0]) / 2
    print(
        f"memory: peak RSS {' -> '.join(f'{p:.0f}' for p in peaks)} MB, slope {slope:+.0f} MB per doubling ({slope / peaks[0]:+.1%})"
    )


if __name__ == "__main__":
    main()
