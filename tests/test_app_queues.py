"""The app's fairness and memory bounds (issue 11, point 18) and its progress display
(point 10), without a server: per-model queues, the bytes a session holds, eviction of
the least recently used and idle sessions, and the progress events the page receives."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

pytest.importorskip("gradio", reason="gradio not installed: pip install -e '.[app]'")

from tokentrail.app import queues  # noqa: E402
from tokentrail.app.options import DEFAULT_OPTIONS  # noqa: E402
from tokentrail.app.pool import SessionPool  # noqa: E402
from tokentrail.app.session import Session  # noqa: E402
from tokentrail.app.wiring import page_progress  # noqa: E402
from tokentrail.engine.budget import held_bytes  # noqa: E402
from tokentrail.present.progress import CallbackProgress, analysis_steps  # noqa: E402


# ---- per-model queues ------------------------------------------------------------------------
def _hold(model: str, started: threading.Event, release: threading.Event, errors: list) -> threading.Thread:
    def body():
        try:
            with queues.concurrency_for(model):
                started.set()
                release.wait(120)  # a safety net: the test sets it
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
            started.set()

    t = threading.Thread(target=body)
    t.start()
    return t


def test_a_busy_model_never_blocks_another_model_and_refuses_beyond_its_waiting_room():
    model, other = "queue-test-a", "queue-test-b"
    release, errors, threads = threading.Event(), [], []
    try:
        first = threading.Event()
        threads.append(_hold(model, first, release, errors))
        assert first.wait(60)
        assert queues.load(model) == (1, 0)
        # the waiting room fills: these wait (they are not refused)
        for _ in range(queues.WAITING_PER_MODEL):
            threads.append(_hold(model, threading.Event(), release, errors))
        deadline = time.monotonic() + 60
        while queues.load(model) != (1, queues.WAITING_PER_MODEL) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert queues.load(model) == (1, queues.WAITING_PER_MODEL)
        # one more for the same model: refused at once, with a message for the page. "At once"
        # is an event, not a clock: the holders leave only when `release` is set, so a refusal
        # that waited for a place would still be waiting; it comes back while all still hold
        with (
            pytest.raises(queues.ModelBusy, match=f"{model} is busy with {1 + queues.WAITING_PER_MODEL} requests"),
            queues.concurrency_for(model),
        ):
            pass
        assert queues.load(model) == (1, queues.WAITING_PER_MODEL) and not release.is_set()
        # another model runs at once while the first is saturated (its holders still hold)
        with queues.concurrency_for(other):
            assert queues.load(other) == (1, 0)
            assert queues.load(model) == (1, queues.WAITING_PER_MODEL)
        # re-entrant: nested model work of one request does not wait for itself
        with queues.concurrency_for(other), queues.concurrency_for(other):
            assert queues.load(other) == (1, 0)
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert errors == []
    assert queues.load(model) == (0, 0) and queues.load(other) == (0, 0)


def test_one_model_can_never_take_every_worker():
    from tokentrail.session.models import MAX_LOADED

    per_model = queues.PER_MODEL + queues.WAITING_PER_MODEL
    assert per_model * MAX_LOADED < queues.WORKERS
    assert queues.EVENTS == {"concurrency_id": "tokentrail", "concurrency_limit": queues.WORKERS}


def test_two_models_taken_in_one_order_never_deadlock():
    """Two comparisons naming the same two models in opposite orders both finish."""
    done = []

    def compare(a, b):
        for _ in range(50):
            with queues.concurrency_for(a, b):
                time.sleep(0.001)
        done.append((a, b))

    threads = [threading.Thread(target=compare, args=pair) for pair in (("dl-x", "dl-y"), ("dl-y", "dl-x"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(done) == 2


# ---- memory -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Holder:
    a: np.ndarray
    b: object


def test_held_bytes_counts_each_buffer_once():
    x = np.zeros((10, 10), dtype=np.float32)  # 400 bytes
    t = torch.zeros(25, dtype=torch.float64)  # 200 bytes
    assert held_bytes(x) == 400
    assert held_bytes(x, x[2:5], x.T) == 400  # views share the base array
    assert held_bytes(t, t[3:], t.view(5, 5)) == 200  # one storage
    assert held_bytes(_Holder(x, {"t": [t, (t, "text", 3)]})) == 600
    assert held_bytes(_Holder(np.ones(3), None), np.ones(3)) == 48  # two arrays: both count
    assert held_bytes(None, "abc", 5) == 0


def _session_holding(nbytes: int) -> Session:
    s = Session(model="minilm")
    s._trails["a cached analysis"] = np.zeros(nbytes, dtype=np.uint8)
    s.trail = object()  # stands for the Trail on show
    return s


def test_least_recently_used_sessions_are_evicted_over_the_cap_with_a_message():
    pool = SessionPool(total_bytes=2500, idle_s=3600)
    a, b, c = (pool.use(_session_holding(1000)) for _ in range(3))
    assert pool.nbytes() == 3000
    assert pool.settle(current=a, cap=False) == []  # a click measures nothing
    pool.use(a)  # a is used again: b is now the least recently used
    evicted = pool.settle(current=a)
    assert evicted == [b] and b.nbytes == 0 and pool.nbytes() == 2000
    with pytest.raises(Exception, match="cleared to make room for other users.*press Analyse"):
        b.require_trail()
    assert a.evicted is None and c.evicted is None


def test_a_busy_session_and_the_one_being_served_are_not_evicted():
    pool = SessionPool(total_bytes=0, idle_s=3600)
    a, b = pool.use(_session_holding(1000)), pool.use(_session_holding(1000))
    with a.lock:  # a is busy with an event (in this thread): a settle elsewhere skips it
        result = []
        t = threading.Thread(target=lambda: result.append(pool.settle(current=b)))
        t.start()
        t.join(5)
    assert result == [[]] and a.nbytes == 1000 and b.nbytes == 1000


def test_idle_sessions_lose_their_results():
    pool = SessionPool(total_bytes=1 << 40, idle_s=60)
    old, new = pool.use(_session_holding(1000)), pool.use(_session_holding(1000))
    assert pool.settle(current=new, cap=False) == []
    old.last_used -= 61
    assert pool.settle(current=new, cap=False) == [old]  # what every click does
    with pytest.raises(Exception, match="idle for over 1 minutes"):
        old.require_trail()
    assert new.nbytes == 1000


def test_idle_sessions_lose_their_results_when_no_page_sends_an_event():
    pool = SessionPool(total_bytes=1 << 40, idle_s=0.2)
    idle = pool.use(_session_holding(1000))
    stop = pool.sweep_every(0.05)
    try:
        deadline = time.monotonic() + 60  # a safety net: the loop ends at the sweeper's event
        while idle.nbytes and time.monotonic() < deadline:  # no use(), no settle(): only the sweeper
            time.sleep(0.05)
        assert idle.nbytes == 0 and "idle for over" in idle.evicted
    finally:
        stop.set()


def test_the_sweeper_ends_with_its_pool():
    import gc

    pool, before = SessionPool(), set(threading.enumerate())
    pool.sweep_every(0.01)
    (thread,) = [t for t in threading.enumerate() if t not in before and t.name == "tokentrail-idle-sweep"]
    del pool
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


def test_sessions_are_held_weakly():
    pool = SessionPool()
    pool.use(_session_holding(10))
    import gc

    gc.collect()
    assert pool.sessions() == []


# ---- progress -----------------------------------------------------------------------------------
def test_callback_progress_turns_fractions_into_step_counts():
    seen = []
    bar = CallbackProgress(lambda m, done, total: seen.append((m, done, total)))
    bar.loading("Converting GGUF weights (first run, ~30 s)…")
    bar.start_analysis(analysis_steps([("attn_resid", "encodings"), ("heads", "value")], n_layers=4))
    for i in range(6):
        bar.analysis(i / 5, f"step {i}")
    assert seen[0] == ("Converting GGUF weights (first run, ~30 s)", None, None)
    assert [s[1:] for s in seen[1:]] == [(0, 5), (1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


class _FakeGradioProgress:
    def __init__(self):
        self.calls = []

    def __call__(self, progress, desc=None, total=None, unit="steps"):
        self.calls.append((progress, desc, unit))


def test_the_page_progress_bar_gets_loading_messages_and_analysis_steps(tmp_path):
    """What ``analyse`` hands Gradio's progress bar for a real analysis of a model loaded
    from a folder (a tiny random Llama): the loading message without a bar, then
    done/total analysis steps."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("tokentrail_test_app_models", Path(__file__).parent / "test_app.py")
    test_app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_app)
    folder = test_app.save_tiny_models(tmp_path)["tiny-llama"]
    fake = _FakeGradioProgress()
    options = DEFAULT_OPTIONS.with_(sites=("attn_resid", "layer_out"), spaces=("encodings", "embeddings"))
    Session(model=str(folder)).analyse("Fruit flies like a banana.", options, page_progress(fake))
    loading = [c for c in fake.calls if c[0] is None]
    steps = [c[0] for c in fake.calls if c[0] is not None]
    assert loading and all(str(folder) in c[1] for c in loading)  # a message, no bar
    assert steps[0] == (0, 2) and steps[-1] == (2, 2)  # two residual spaces: two steps
    assert sorted(set(steps)) == [(0, 2), (1, 2), (2, 2)]
    assert {c[2] for c in fake.calls} == {"steps"}
    assert any(c[1] == "comparing with embeddings" for c in fake.calls)
