"""Export and read-back time and size of a whole Trail (every table), per format.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_export.py [--repeat 9]

MiniLM on a 137-token text (the attention table is 6 x 12 x 137^2 = 1.35M rows, under
the 2M default limit): prints write time, file size, load time and whether the Trail
read back equals the one written.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import tokentrail as tt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9, help="copies of the sentence (9 -> 137 MiniLM tokens)")
    ap.add_argument("--model", default="minilm")
    args = ap.parse_args()
    text = " ".join(["The old cat sat by the river bank and watched the boats go by."] * args.repeat)
    trail = tt.trace(text, args.model)
    print(f"{args.model}: {trail.n_tokens} tokens, attention table {trail.attentions.size:,} rows")
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("parquet", "csv", "json"):
            t0 = time.perf_counter()
            path = trail.export(os.path.join(d, f"t.{fmt}"))
            t1 = time.perf_counter()
            back = tt.Trail.load(path)
            t2 = time.perf_counter()
            print(
                f"{fmt:8s} write {t1 - t0:6.2f} s  {os.path.getsize(path) / 1e6:7.1f} MB  load {t2 - t1:6.2f} s  equal: {back == trail}"
            )


if __name__ == "__main__":
    main()
