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
    from tokentrail.analysis.bare import analyse
    from tokentrail.engine.budget import estimate_run, held_bytes
    from tokentrail.engine.space_cache import SpaceCache
    from tokentrail.spec.options import TraceOptions

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
        trail = analyse(
            adapter,
            spaces,
            ids,
            text=" ".join(toks),
            tokens=toks,
            special=[False] * n,
            label=lambda vs: {int(v): str(v) for v in vs},
            model_name="tiny-gpt2",
            options=opts,
        )
        peak = _status("VmHWM") - start
        assert trail.n_tokens == n and trail.view("heads", "query").top_ids.shape == (2, 2, n, 15)
        held = held_bytes(trail)
        return peak - held - spaces.nbytes, held

    working(20)  # builds every space: the cache is then the same for both lengths
    (short, short_held), (long, long_held) = working(SHORT), working(LONG)
    est = estimate_run(
        adapter,
        tokens=LONG,
        pairs=opts.pairs(),
        similarities=len(opts.similarities),
        k=opts.k,
        overlap_k=opts.overlap_k or 100,
        lens=opts.lens,
    )  # the default overlap@100
    return {
        "short": short,
        "long": long,
        "short_held": short_held,
        "long_held": long_held,
        "estimated": est.activations + est.working,
    }


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _can_reset_peak(),
    reason="needs /proc/self/clear_refs to reset the peak RSS (Linux)",
)
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
    assert m["long"] <= m["estimated"], (
        f"working memory {m['long'] / mib:.0f} MiB over the estimate's {m['estimated'] / mib:.0f} MiB"
    )


# ---- a streamed trace: the captured activations do not grow with layers x tokens --------------
WIDE = dict(n_embd=768, n_layer=12, n_head=2, n_inner=768)  # activations dominate: 5 L d floats a token
SHORT_S, LONG_S = 400, 800


def _measure_streamed() -> dict:
    """In the child: working memory (bytes) of the everything-trace at SHORT_S and LONG_S
    tokens, streamed and (for contrast) from a capture of every layer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tokentrail.adapters import adapter_for
    from tokentrail.analysis.bare import analyse
    from tokentrail.analysis.checks import streams
    from tokentrail.engine.budget import held_bytes
    from tokentrail.engine.space_cache import SpaceCache
    from tokentrail.spec.options import TraceOptions

    torch.manual_seed(0)
    adapter = adapter_for(
        GPT2LMHeadModel(GPT2Config(vocab_size=500, n_positions=LONG_S, attn_implementation="eager", **WIDE)).eval()
    )
    spaces = SpaceCache(adapter)
    opts = TraceOptions.make(site="all", space="all", lens=True)

    def working(n: int, stream: bool) -> int:
        ids = torch.randint(0, 500, (n,), generator=torch.Generator().manual_seed(n))
        toks = [str(i) for i in ids.tolist()]
        gc.collect()
        start = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        trail = analyse(
            adapter,
            spaces,
            ids,
            text=" ".join(toks),
            tokens=toks,
            special=[False] * n,
            label=lambda vs: {int(v): str(v) for v in vs},
            model_name="wide-gpt2",
            options=opts,
            stream=stream,
        )
        peak = _status("VmHWM") - start
        held = held_bytes(trail)
        del trail
        return peak - held  # the head-space cache, built before, is the same at both lengths

    working(20, False)  # builds every space
    out = {"automatic": [streams(adapter, opts, n) for n in (20, SHORT_S, LONG_S)]}
    for stream in (True, False):
        out["streamed" if stream else "captured"] = [working(n, stream) for n in (SHORT_S, LONG_S)]
    return out


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _can_reset_peak(),
    reason="needs /proc/self/clear_refs to reset the peak RSS (Linux)",
)
def test_a_streamed_trace_holds_one_layers_activations():
    """From 400 to 800 tokens, a captured trace's working memory grows by every layer's
    activations (5 L n d floats: 70 MiB here) and more (measured: 490 MiB); a streamed
    one's by one layer's (6 MiB) and the forward pass's own attention scores (H n^2; the
    anisotropy's pairs are made a bounded block at a time) (measured: 33 MiB). Long texts
    stream by default."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, __file__, "streamed"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads(done.stdout.strip().splitlines()[-1])
    mib = 2**20
    (s_short, s_long), (c_short, c_long) = m["streamed"], m["captured"]
    assert m["automatic"] == [False, True, True]
    grew, captured_grew = s_long - s_short, c_long - c_short
    assert grew < 64 * mib, (
        f"the streamed trace's working memory grew from {s_short / mib:.0f} to {s_long / mib:.0f} MiB"
    )
    assert captured_grew > 3 * grew, (
        f"the captured trace grew by {captured_grew / mib:.0f} MiB, the streamed one by {grew / mib:.0f}"
    )


if __name__ == "__main__":
    print(json.dumps(_measure_streamed() if sys.argv[1:] == ["streamed"] else _measure()))
