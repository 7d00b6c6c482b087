"""``--engine ray``: batches as Ray tasks on actors that each hold the model.

One actor per GPU when Ray sees GPUs, else ``workers`` CPU actors (each with its share
of the CPU threads). Actors compute a batch and write its Parquet parts themselves, into
the study folder they share with the driver (a local disk, or a shared file system on a
cluster); the driver keeps a few batches in flight per actor, records each finished
batch in the manifest and feeds the sampling threshold back into new tasks.
"""

from __future__ import annotations

from collections import deque

from tokentrail.corpus.batches import model_info, run_batch
from tokentrail.corpus.compute import StudyOptions
from tokentrail.session.models import load
from tokentrail.spec.errors import InputError, TokentrailError
from tokentrail.store.writer import Reservoir, StudyDir


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install 'tokentrail[ray]'") from None
    return ray


class _Worker:
    """The actor: loads the model once, then computes and writes batches."""

    def __init__(
        self,
        model: str,
        allow_pickle: bool,
        options: StudyOptions,
        strict: bool,
        root: str,
        threads: int,
        device: str | None = None,
        job=run_batch,
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.loaded = load(model, allow_pickle=allow_pickle, device=device)
        self.options, self.strict, self.dir = options, strict, StudyDir(root)
        self.job = job  # run_batch (a study's batch), or a fit's (tokentrail.corpus.fit.fit_job)

    def info(self) -> dict:
        return model_info(self.loaded)

    def vocab(self) -> dict[str, int]:
        return self.loaded.tokenizer.get_vocab()

    def run(self, b: int, batch: list, threshold: float):
        try:
            return self.job(self.loaded, b, batch, self.options, self.dir, threshold=threshold, strict=self.strict)
        except TokentrailError as exc:  # an error the user must see as such, not a traceback
            return b, {"error": str(exc)}, set()


class RayRunner:
    def __init__(
        self,
        model,
        allow_pickle,
        options,
        strict,
        sd: StudyDir,
        *,
        say,
        address=None,
        workers=1,
        device=None,
        job=run_batch,
    ):
        ray = _ray()
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            say(f"starting Ray (cluster at {address})" if address else "starting Ray")
            kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            if address:
                ray.init(address=address, **kwargs)
            else:
                import os

                ray.init(
                    num_cpus=max(workers, 1),
                    **kwargs,
                    runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}},
                )
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = gpus if gpus else workers
        threads = 0 if gpus else max(1, int(ray.cluster_resources().get("CPU", n)) // n)
        actor = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(_Worker)
        sd.root.mkdir(parents=True, exist_ok=True)
        # one actor per GPU (each on its own, "cuda"), else CPU actors on the device asked for
        dev = "cuda" if gpus else device
        say(f"loading {model} in {n} Ray worker{'s' if n > 1 else ''}")
        self.actors = [
            actor.remote(model, allow_pickle, options, strict, str(sd.root.resolve()), threads, dev, job)
            for _ in range(n)
        ]
        self.info = ray.get(self.actors[0].info.remote())

    def vocab(self) -> dict[str, int]:
        return self.ray.get(self.actors[0].vocab.remote())

    def run(self, numbered, reservoir: Reservoir, sd: StudyDir):
        ray = self.ray
        in_flight: dict = {}
        slots = deque(i for i in range(len(self.actors)) for _ in range(2))  # two batches queued per actor
        numbered = iter(numbered)
        exhausted = False
        while True:
            while slots and not exhausted:
                try:
                    b, batch = next(numbered)
                except StopIteration:
                    exhausted = True
                    break
                a = slots.popleft()
                in_flight[self.actors[a].run.remote(b, batch, reservoir.threshold())] = a
            if not in_flight:
                return
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                slots.append(in_flight.pop(ref))
                b, meta, keys = ray.get(ref)
                if "error" in meta:
                    raise InputError(meta["error"])
                yield b, meta, keys

    def close(self):
        for a in getattr(self, "actors", []):
            self.ray.kill(a)
        if self.started:
            self.ray.shutdown()
