"""Click-to-result latency of the web app on the bundled model, for a 20-token text.

A click on a token re-renders every view from the session's cached analysis. Timed two
ways, ~20 clicks each, on distinct tokens (so each click also computes that token's
per-head view):

* in-process: the callback path (select, build every view, Gradio's postprocessing of
  each output), no HTTP;
* through gradio_client: a real server on 127.0.0.1, the ``/select_token`` endpoint,
  round trip included.

Prints median and p90 (milliseconds) against the 1 s target.

``--mixed`` instead times short users while long analyses run (issue 11, point 18): on
one server on 127.0.0.1, ``--long`` clients analyse fresh ~100-token texts with SmolLM2
back to back, while ``--short`` MiniLM clients click tokens (half on the layers tab, a
re-render; half on the heads tab, which needs MiniLM itself) for ``--seconds``; prints
the short users' click times (p50, p90, max) against the 2 s p90 bound, and how many long
analyses ran. ``tests/test_app_load.py`` runs the same function. Run:

    .venv/bin/python benchmarks/bench_app_latency.py [--clicks 20] [--model minilm]
    .venv/bin/python benchmarks/bench_app_latency.py --mixed [--long 2 --short 10 --seconds 60]
"""

from __future__ import annotations

import argparse
import contextlib
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
MIXED_P90_S = 2.0  # short users' p90 click time while long analyses run (issue 11)
LONG_TEXT = "The old cat sat by the river bank and watched the boats go by in the evening light, " * 5


def percentile(seconds: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``seconds``."""
    xs = sorted(seconds)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p90 = percentile(ms, 0.9)
    med = statistics.median(ms)
    verdict = "OK" if p90 < TARGET_S * 1000 else "SLOW"
    return f"{name:<28} n={len(ms):>3}  median {med:7.1f} ms  p90 {p90:7.1f} ms  max {ms[-1]:7.1f} ms  [{verdict}: target < {TARGET_S * 1000:.0f} ms]"


TABS = ("layers", "heatmaps", "heads", "walkthrough")


def in_process(model: str, clicks: int) -> tuple[dict[str, list[float]], int, float]:
    """Per visible tab: seconds from a token click to every output postprocessed."""
    import gradio as gr

    from tokentrail.app.options import DEFAULT_OPTIONS
    from tokentrail.app.session import ModelMenu, Session
    from tokentrail.app.views import VIEWS, render_views

    menu = ModelMenu()
    session = Session(model=model)
    t0 = time.perf_counter()
    session.analyse(TEXT, DEFAULT_OPTIONS)
    analyse_s = time.perf_counter() - t0
    n = session.trail.n_tokens
    # the components that postprocess each output, as the server does
    frame, plot, html = gr.Dataframe(interactive=False, render=False), gr.Plot(render=False), gr.HTML(render=False)
    post = {
        "table": frame,
        "plot_sim": plot,
        "plot_rank": plot,
        "plot_overlap": plot,
        "heat": html,
        "heads": frame,
        "attention": plot,
        "walk_sources": frame,
        "walk_vectors": frame,
    }
    times: dict[str, list[float]] = {}
    for tab in TABS:
        session.tab = tab
        times[tab] = []
        for i in range(clicks):
            t0 = time.perf_counter()
            session.select(token=(i % (n - 2)) + 1)
            out = dict(zip(VIEWS, render_views(session, menu, False, "rank")))
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
        out = client.predict(
            TEXT, model, True, "attn_resid", "cosine", 15, True, "none", False, "rank", api_name="/tokenize"
        )
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


class PageClient:
    """One page's session over Gradio's plain HTTP queue protocol (``queue/join``, then
    the ``queue/data`` event stream): what ``gradio_client`` does, at a fraction of its
    CPU, so that many simulated users on a small machine measure the server, not the
    clients. ``call`` returns the event's outputs (in the event's order, a session state
    as None) and the progress messages the page received."""

    def __init__(self, url: str, config: dict | None = None):
        import json
        import urllib.request
        import uuid

        self.url, self.json = url, json
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
        self.request = urllib.request.Request
        config = config or json.load(self.opener.open(url + "config", timeout=30))
        self.fn = {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}
        self.config = config
        self.session = uuid.uuid4().hex[:12]

    def call(self, api_name: str, *data) -> tuple[list, list]:
        body = self.json.dumps(
            {
                "data": [None, *data],
                "fn_index": self.fn[api_name],
                "session_hash": self.session,
                "event_data": None,
                "trigger_id": None,
            }
        )
        req = self.request(
            self.url + "gradio_api/queue/join", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        event = self.json.load(self.opener.open(req, timeout=30))["event_id"]
        progress = []
        with self.opener.open(self.url + f"gradio_api/queue/data?session_hash={self.session}", timeout=600) as stream:
            for line in stream:
                if not line.startswith(b"data:"):
                    continue
                msg = self.json.loads(line[5:])
                if msg.get("event_id") != event:
                    continue
                if msg.get("msg") == "progress":
                    progress += msg["progress_data"]
                elif msg.get("msg") == "process_completed":
                    if not msg.get("success", True):
                        raise RuntimeError(f"{api_name} failed: {msg.get('output')}")
                    return msg["output"]["data"], progress
        raise RuntimeError(f"{api_name}: the event stream ended without a result")


def mixed_load(
    url: str,
    *,
    long_users: int = 2,
    short_users: int = 10,
    seconds: float = 60.0,
    long_model: str = "smollm2",
    short_model: str = "minilm",
    think_s: float = 1.0,
) -> dict:
    """Short users' click times while long analyses run, against the app at ``url``.

    Returns ``clicks`` (seconds each), ``busy`` (clicks refused as busy: none expected),
    ``long_done`` / ``long_started`` (long analyses finished / begun) and ``overlap`` (the
    seconds of the window during which a long analysis was in flight)."""
    import random
    import threading

    opts = (
        True,
        "attn_resid",
        "cosine",
        15,
        True,
        "none",
        False,
        "rank",
    )  # positional, site, similarity, k, causal, correct, adjusted, metric
    stop = threading.Event()
    lock = threading.Lock()
    out: dict = {"clicks": [], "busy": 0, "long_done": 0, "long_started": 0, "errors": []}
    in_flight = [0]
    flight_s = [0.0]

    def long_user(i: int, client) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            text = f"Reader {i}, pass {n}: {LONG_TEXT}"  # a fresh text: never a cached analysis
            with lock:
                out["long_started"] += 1
                in_flight[0] += 1
            t0 = time.perf_counter()
            try:
                client.call("tokenize", text, long_model, *opts)
                with lock:
                    out["long_done"] += 1
            except Exception as exc:  # noqa: BLE001
                with lock:
                    out["errors"].append(f"long: {exc}")
            finally:
                with lock:
                    in_flight[0] -= 1
                    flight_s[0] += time.perf_counter() - t0

    def short_user(i: int, client, n_tokens: int) -> None:
        rng = random.Random(i)
        while not stop.is_set():
            t0 = time.perf_counter()
            status = client.call("select_token", rng.randrange(1, n_tokens - 1), False, "rank")[0][0]
            dt = time.perf_counter() - t0
            with lock:
                if "busy" in status:
                    out["busy"] += 1
                elif status.startswith("**Problem"):
                    out["errors"].append(f"short: {status}")
                else:
                    out["clicks"].append(dt)
            time.sleep(think_s)  # a person between two clicks

    # every client connects, and each short user analyses its text, before the clock starts
    config = PageClient(url).config
    longs = [PageClient(url, config) for _ in range(long_users)]
    shorts = []
    for i in range(short_users):
        c = PageClient(url, config)
        first, _ = c.call("tokenize", f"{TEXT} Reader {i}.", short_model, *opts)
        if i % 2:
            c.call("show_heads", False, "rank")
        shorts.append((c, len(first[2]["choices"])))  # outputs: the session state, the status, the chips, ...
    threads = [threading.Thread(target=long_user, args=(i, c)) for i, c in enumerate(longs)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the long analyses are under way
    t_start = time.perf_counter()
    threads += [threading.Thread(target=short_user, args=(i, c, n)) for i, (c, n) in enumerate(shorts)]
    for t in threads[long_users:]:
        t.start()
    time.sleep(seconds)
    with lock:
        still = in_flight[0]
    out["window_s"] = time.perf_counter() - t_start
    out["long_in_flight_at_end"] = still
    stop.set()
    for t in threads:
        t.join(600)
    return out


@contextlib.contextmanager
def served_elsewhere(preload: tuple[str, ...] = ("minilm", "smollm2"), timeout_s: float = 300.0):
    """The app in a server process of its own on 127.0.0.1 (as ``tokentrail serve``), so
    that the clients' work in this process does not share the server's interpreter; yields
    its URL and stops it."""
    import importlib.util
    import subprocess

    # the project's loopback helpers (by path: under pytest, "conftest" names another module)
    spec = importlib.util.spec_from_file_location(
        "tokentrail_e2e_harness", Path(__file__).resolve().parents[1] / "tests" / "e2e" / "conftest.py"
    )
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    port = harness.free_port()
    code = f"from tokentrail.app import launch; launch(port={port}, preload={list(preload)!r})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ)
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        harness._wait_until_answers(url, timeout_s)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def mixed_summary(out: dict, long_users: int, short_users: int) -> str:
    c = out["clicks"]
    return (
        f"mixed load: {long_users} long SmolLM2 users ({out['long_started']} analyses begun, {out['long_done']} finished), "
        f"{short_users} MiniLM clickers for {out['window_s']:.0f} s: {len(c)} clicks, "
        f"p50 {percentile(c, 0.5) * 1000:.0f} ms, p90 {percentile(c, 0.9) * 1000:.0f} ms, max {max(c) * 1000:.0f} ms "
        f"[bound: p90 < {MIXED_P90_S * 1000:.0f} ms]; refused as busy: {out['busy']}; errors: {len(out['errors'])}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--mixed", action="store_true", help="short clickers while long analyses run")
    ap.add_argument("--long", type=int, default=2)
    ap.add_argument("--short", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    import torch

    print(f"torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}")
    if args.mixed:
        with served_elsewhere() as url:
            out = mixed_load(url, long_users=args.long, short_users=args.short, seconds=args.seconds)
        print(mixed_summary(out, args.long, args.short))
        return
    print(f"model {args.model}; text {TEXT!r}")
    times, n, analyse_s = in_process(args.model, args.clicks)
    print(f"analysis (once per text/model/options, cached): {analyse_s * 1000:.0f} ms for {n} tokens")
    for tab, ts in times.items():
        print(summary(f"in-process, {tab} tab", ts))
    for tab, ts in through_client(args.model, args.clicks).items():
        print(summary(f"gradio_client, {tab} tab", ts))


if __name__ == "__main__":
    main()
