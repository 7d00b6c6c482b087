"""Click-to-result latency of the web app on the bundled model, for a 20-token text.

A click on a token re-renders every view from the session's cached analysis. Timed two
ways, ~20 clicks each, on distinct tokens (so each click also computes that token's
per-head view):

* in-process: the callback path (select, build every view, Gradio's postprocessing of
  each output), no HTTP;
* through gradio_client: a real server on 127.0.0.1, the ``/select_token`` endpoint,
  round trip included.

Prints median and p90 (milliseconds) against the 1 s target. Run:

    .venv/bin/python benchmarks/bench_app_latency.py [--clicks 20] [--model minilm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
os.environ["no_proxy"] = os.environ["NO_PROXY"]

TEXT = "The quick brown fox jumps over the lazy dog while the old cat sleeps in the sun."
TARGET_S = 1.0


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    med = statistics.median(ms)
    verdict = "OK" if p90 < TARGET_S * 1000 else "SLOW"
    return f"{name:<28} n={len(ms):>3}  median {med:7.1f} ms  p90 {p90:7.1f} ms  max {ms[-1]:7.1f} ms  [{verdict}: target < {TARGET_S * 1000:.0f} ms]"


TABS = ("layers", "heatmaps", "heads", "walkthrough")


def in_process(model: str, clicks: int) -> tuple[dict[str, list[float]], int, float]:
    """Per visible tab: seconds from a token click to every output postprocessed."""
    import gradio as gr

    from tokentrail.app import layout
    from tokentrail.app.session import DEFAULT_OPTIONS, ModelMenu, Session

    menu = ModelMenu()
    session = Session(model=model)
    t0 = time.perf_counter()
    session.analyse(TEXT, DEFAULT_OPTIONS)
    analyse_s = time.perf_counter() - t0
    n = session.trail.n_tokens
    # the components that postprocess each output, as the server does
    frame, plot, html = gr.Dataframe(interactive=False, render=False), gr.Plot(render=False), gr.HTML(render=False)
    post = {"table": frame, "plot_sim": plot, "plot_rank": plot, "plot_overlap": plot, "heat": html, "heads": frame, "attention": plot, "walk_sources": frame, "walk_vectors": frame}
    times: dict[str, list[float]] = {}
    for tab in TABS:
        session.tab = tab
        times[tab] = []
        for i in range(clicks):
            t0 = time.perf_counter()
            session.select(token=(i % (n - 2)) + 1)
            out = dict(zip(layout.VIEWS, layout._views(session, menu, False, "rank")))
            for name, comp in post.items():
                if not isinstance(out[name], dict):  # gr.skip() for hidden tabs
                    comp.postprocess(out[name])
            times[tab].append(time.perf_counter() - t0)
    return times, n, analyse_s


def through_client(model: str, clicks: int) -> dict[str, list[float]]:
    from gradio_client import Client

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
    from conftest import serve  # the project's loopback launcher

    from tokentrail.app import build_app, launch_options

    demo = build_app()
    times: dict[str, list[float]] = {}
    with serve(demo, **launch_options()) as url:
        client = Client(url, verbose=False)
        out = client.predict(TEXT, model, True, "attn_resid", "cosine", 15, True, "none", False, "rank", api_name="/tokenize")
        n = len(out[1]["choices"])
        for tab in ("layers", "heads"):
            client.predict(False, "rank", api_name=f"/show_{tab}")
            client.predict(1, False, "rank", api_name="/select_token")  # warm the endpoint
            times[tab] = []
            for i in range(clicks):
                t0 = time.perf_counter()
                client.predict((i % (n - 2)) + 1, False, "rank", api_name="/select_token")
                times[tab].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--model", default="minilm")
    args = ap.parse_args()
    import torch

    print(f"model {args.model}; text {TEXT!r}; torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}")
    times, n, analyse_s = in_process(args.model, args.clicks)
    print(f"analysis (once per text/model/options, cached): {analyse_s * 1000:.0f} ms for {n} tokens")
    for tab, ts in times.items():
        print(summary(f"in-process, {tab} tab", ts))
    for tab, ts in through_client(args.model, args.clicks).items():
        print(summary(f"gradio_client, {tab} tab", ts))


if __name__ == "__main__":
    main()
