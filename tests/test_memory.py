"""The working memory of an everything-trace does not grow with the number of tokens.

Working memory is the peak RSS of a trace minus what it returns (the Trail's arrays) and
minus the head-space cache the caller keeps. A tiny GPT-2 with a large vocabulary and
position embeddings makes every ``(tokens x V)`` term show: per-position row norms of
the position-dependent spaces (``encodings`` and every head space), the scoring blocks,
the logit lens' chunk. Before the per-position norms were made a window at a time, the
longer text below took about 1.6 GB more than the shorter one.

The trace runs in a child process with glibc's mmap threshold fixed: by default glibc
raises it as large blocks are freed and keeps later ones on its heap, where fragmentation
moves RSS by 150 MiB from run to run; with it fixed, RSS follows what is alive.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

V = 60_000  # large: a (tokens x V) float32 term is 0.24 MB per token
SHORT, LONG = 300, 900  # both past the fixed chunks (lens: 279 tokens at this V; a window: 39 positions)
GROWTH_MIB = 48  # what the longer text may add: O(tokens x (d + k)) bookkeeping and noise


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _can_reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def _measure() -> dict:
    """In the child: working memory and results (bytes) at SHORT and LONG tokens."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tokentrail.adapters import adapter_for
    from tokentrail.analysis import analyse
    from tokentrail.budget import estimate_run, held_bytes
    from tokentrail.options import TraceOptions
    from tokentrail.spaces import SpaceCache

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=V, n_embd=16, n_layer=2, n_head=2, n_positions=LONG, attn_implementation="eager")
    adapter = adapter_for(GPT2LMHeadModel(config).eval())
    spaces = SpaceCache(adapter)
    opts = TraceOptions.make(site="all", space="all", lens=True)

    def working(n: int) -> tuple[int, int]:
        ids = torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(n))
        toks = [str(i) for i in ids.tolist()]
        gc.collect()
        start = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        trail = analyse(adapter, spaces, ids, text=" ".join(toks), tokens=toks, special=[False] * n, label=lambda vs: {int(v): str(v) for v in vs}, model_name="tiny-gpt2", options=opts)  # fmt: skip
        peak = _status("VmHWM") - start
        assert trail.n_tokens == n and trail.view("heads", "query").top_ids.shape == (2, 2, n, 15)
        held = held_bytes(trail)
        return peak - held - spaces.nbytes, held

    working(20)  # builds every space: the cache is then the same for both lengths
    (short, short_held), (long, long_held) = working(SHORT), working(LONG)
    est = estimate_run(adapter, tokens=LONG, pairs=opts.pairs(), similarities=len(opts.similarities), k=opts.k, overlap_k=opts.overlap_k or 100, lens=opts.lens)  # the default overlap@100
    return {"short": short, "long": long, "short_held": short_held, "long_held": long_held, "estimated": est.activations + est.working}


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(), reason="needs /proc/self/clear_refs to reset the peak RSS (Linux)")
def test_working_memory_does_not_grow_with_tokens():
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads(done.stdout.strip().splitlines()[-1])
    mib = 2**20
    assert m["long_held"] > m["short_held"]  # the results do grow (attentions, top-k lists): they are not counted
    assert m["long"] - m["short"] < GROWTH_MIB * mib, (
        f"working memory grew from {m['short'] / mib:.0f} MiB at {SHORT} tokens to {m['long'] / mib:.0f} MiB at {LONG} tokens"
    )
    # the estimate a run is refused by covers what it measures (activations and working chunks)
    assert m["long"] <= m["estimated"], f"working memory {m['long'] / mib:.0f} MiB over the estimate's {m['estimated'] / mib:.0f} MiB"


if __name__ == "__main__":
    print(json.dumps(_measure()))
