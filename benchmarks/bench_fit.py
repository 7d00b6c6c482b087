"""Fitting a translator vs studying the same corpus: tokens per second, in one process.

    python benchmarks/bench_fit.py --model minilm --limit 200
    python benchmarks/bench_fit.py --model smollm2 --limit 50 --threads 1

Over the first ``--limit`` sentences of the UD English EWT dev split (``--corpus``; by
default ../shared/data beside the repository or /work/shared/data; the script says so and
stops when it is absent), the same process runs

* fit: ``tt.fit`` (an identity translator of ``--site`` at every layer: float64 sums of
  ``Σ h hᵀ`` and ``Σ h tᵀ`` per layer, no vocabulary product, solved at the end);
* study: ``tt.study`` of the same site (every token scored against the whole vocabulary);

each timed from the moment its model is loaded (``on_start``) to its end, the solve and
the writing included, ``--repeat`` rounds interleaved, the best round kept. Tokens per
second count the corpus's tokens (the study's count, special tokens included) for both.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CANDIDATES = (
    HERE.parent / "shared" / "data" / "ud-english-ewt" / "en_ewt-ud-dev.conllu",
    Path("/work/shared/data/ud-english-ewt/en_ewt-ud-dev.conllu"),
)


def timed(run) -> float:
    started: list[float] = []
    run(lambda total: started.append(time.perf_counter()))
    return time.perf_counter() - started[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--site", default="attn_resid")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--corpus", type=Path, default=next((c for c in CANDIDATES if c.exists()), CANDIDATES[0]))
    args = p.parse_args()
    if not args.corpus.exists():
        sys.exit(f"no corpus at {args.corpus}: give --corpus (the UD English EWT dev split, en_ewt-ud-dev.conllu)")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import tokentrail as tt

    best = {"fit": float("inf"), "study": float("inf")}
    tokens = 0
    holder: dict = {}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as d:
            best["fit"] = min(
                best["fit"],
                timed(
                    lambda on_start: tt.fit(
                        args.corpus,
                        args.model,
                        Path(d) / "fit",
                        sites=[args.site],
                        batch=args.batch,
                        limit=args.limit,
                        on_start=on_start,
                    )
                ),
            )

            def study(on_start, d=d):
                holder["s"] = tt.study(
                    args.corpus,
                    args.model,
                    Path(d) / "study",
                    sites=[args.site],
                    batch=args.batch,
                    limit=args.limit,
                    on_start=on_start,
                )

            best["study"] = min(best["study"], timed(study))
            tokens = holder["s"].manifest["tokens"]
    print(
        f"{args.model}, {args.limit} UD dev sentences ({tokens:,} tokens), site {args.site}, batch {args.batch}, "
        f"torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, best of {args.repeat}"
    )
    for side in ("fit", "study"):
        print(f"{side:>5}: {best[side]:8.2f} s  {tokens / best[side]:10,.0f} tokens/s")
    print(f"ratio fit/study tokens/s: {best['study'] / best['fit']:.2f}x")


if __name__ == "__main__":
    main()
