"""Tokens per second: one ``analyse_batch`` over 32 sentences against a loop of ``analyse``.

    python benchmarks/bench_batch.py [--model minilm|smollm2] [--texts 32] [--repeats 3]

The sentences are the first ``--texts`` ``# text =`` lines of the UD English-EWT dev set.
Both sides use the defaults of ``tokentrail trace`` (site attn_resid, space encodings,
cosine, k 15, overlap@100) and one shared, already-built space cache (a warm-up call
builds it first), so the difference is the batch's own: one padded forward pass instead
of 32, one set of per-position statistics, and one chunked scoring loop over all queries.
The sides alternate, ``--repeats`` times; the median of each is reported, with how far
the batch's numbers are from the loop's (fp32 noise can swap near-tied neighbours: the
script reports the share of cells whose rank moved and the largest self_sim difference).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

UD = Path("/work/shared/data/ud-english-ewt/en_ewt-ud-dev.conllu")


def sentences(path: Path, count: int) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# text = "):
            out.append(line[len("# text = ") :])
            if len(out) == count:
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=UD)
    args = parser.parse_args()

    import tokentrail
    from tokentrail.analysis.bare import analyse, analyse_batch
    from tokentrail.engine.space_cache import SpaceCache
    from tokentrail.session.inputs import encode

    loaded = tokentrail.load(args.model)
    adapter = loaded.adapter
    texts = sentences(args.data, args.texts)
    enc = [encode(loaded, t) for t in texts]
    n_tokens = sum(len(e.ids) for e in enc)
    spaces = SpaceCache(adapter)
    label = lambda used: {int(i): str(int(i)) for i in used}  # noqa: E731
    common = dict(label=label, model_name=args.model)

    def loop():
        return [
            analyse(adapter, spaces, e.ids, text=t, tokens=e.tokens, special=e.special, **common)
            for t, e in zip(texts, enc)
        ]

    def batch():
        return analyse_batch(
            adapter,
            spaces,
            [e.ids for e in enc],
            texts=texts,
            tokens=[e.tokens for e in enc],
            special=[e.special for e in enc],
            **common,
        )

    print(
        f"{args.model}: {len(texts)} UD sentences, {n_tokens} tokens, {adapter.n_layers} layers, "
        f"torch threads {torch.get_num_threads()}, median of {args.repeats}",
        flush=True,
    )
    with torch.no_grad():
        e = enc[0]  # warm-up: builds the encodings space once, for both sides
        analyse(adapter, spaces, e.ids, text=texts[0], tokens=e.tokens, special=e.special, **common)
        times = {"loop": [], "batch": []}
        for _ in range(args.repeats):
            for name, fn in (("loop", loop), ("batch", batch)):
                t0 = time.perf_counter()
                result = fn()
                times[name].append(time.perf_counter() - t0)
                print(f"  ({name} run: {times[name][-1]:.2f} s)", flush=True)
                if name == "loop":
                    want = result
        moved = sum(int((g.views[0].rank != w.views[0].rank).sum()) for g, w in zip(result, want))
        most = max(int(np.abs(g.views[0].rank - w.views[0].rank).max()) for g, w in zip(result, want))
        sim = max(float(np.abs(g.views[0].self_sim - w.views[0].self_sim).max()) for g, w in zip(result, want))
        cells = sum(w.views[0].rank.size for w in want)

    med = {k: statistics.median(v) for k, v in times.items()}
    for name in ("loop", "batch"):
        print(
            f"  {name:<6} {med[name]:7.2f} s  {n_tokens / med[name]:8.1f} tokens/s   (runs: {', '.join(f'{t:.2f}' for t in times[name])})"
        )
    print(f"  batch speed-up x{med['loop'] / med['batch']:.2f}")
    print(f"  batch vs loop: rank moved in {moved}/{cells} cells (at most {most}); max |self_sim diff| {sim:.1e}")


if __name__ == "__main__":
    main()
