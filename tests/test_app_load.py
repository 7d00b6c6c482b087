"""Mixed load on the app (issue 11, point 18): short users' clicks stay fast while two
long SmolLM2 analyses run, on one server on 127.0.0.1.

The server runs in its own process (as ``tokentrail serve``). Two clients analyse fresh
~100-token texts with SmolLM2 back to back (each analysis takes tens of seconds here); ten
MiniLM clients click a token about once a second meanwhile (half re-render the layers tab,
half compute a layer's heads with MiniLM), over Gradio's plain HTTP queue protocol. The
p90 of their click times is printed and must stay under 2 s. Before the per-model queues,
two SmolLM2 analyses held both of the page's two slots and every click waited for them.

The driver is ``benchmarks/bench_app_latency.py --mixed`` (same function).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="gradio not installed: pip install -e '.[app]'")

import tokentrail as tt  # noqa: E402

pytestmark = pytest.mark.slow  # ~90 s: loads both bundled models, then 45 s of load

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 45.0
LONG_USERS, SHORT_USERS = 2, 10


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_short_clicks_stay_fast_while_two_long_analyses_run():
    try:
        tt.load("smollm2")
    except tt.TokentrailError as exc:
        pytest.skip(f"SmolLM2 cannot be loaded here: {exc}")
    bench = _module("tokentrail_bench_app_latency", ROOT / "benchmarks" / "bench_app_latency.py")
    with bench.served_elsewhere(("minilm", "smollm2")) as url:  # a server process, as `tokentrail serve`
        out = bench.mixed_load(url, long_users=LONG_USERS, short_users=SHORT_USERS, seconds=SECONDS)
    print(bench.mixed_summary(out, LONG_USERS, SHORT_USERS))
    assert out["errors"] == []
    # the load was real: long analyses were in flight through the whole window
    assert out["long_started"] >= LONG_USERS and out["long_in_flight_at_end"] >= 1
    assert out["busy"] == 0  # ten short users fit MiniLM's queue
    assert len(out["clicks"]) >= 5 * SHORT_USERS
    p90 = bench.percentile(out["clicks"], 0.9)
    assert p90 < bench.MIXED_P90_S, f"short users' p90 click time {p90:.2f} s"
