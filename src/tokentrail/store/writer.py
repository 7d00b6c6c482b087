"""A study's folder, written while the run goes, so an interruption loses no finished batch.

Layout::

    DIR/.tokentrail.lock         the writer's lock: one run writes a folder at a time
    DIR/manifest.json            what was run (model, options, input hash) and how far it got
    DIR/data/part-000000.parquet token rows of batch 0 (one file per batch)
    DIR/sample/part-000000.parquet the batch's candidates for the anisotropy sample
                                 (each site and layer, and the encodings as site "embedded")
    DIR/stats/part-000000.parquet  count, sum and sum of squares of the batch's vectors
                                 per site and layer (corpus-fitted corrections)

Every file is written under a temporary name and renamed into place
(:func:`tokentrail.spec.fileio.atomic_write`), so a crash leaves only whole files. A batch is complete when its ``data`` part exists; its ``sample`` and
``stats`` parts are written first. ``--resume`` skips the complete batches and recomputes the rest, which
gives the same files an uninterrupted run writes.

One writer at a time: a run holds an OS lock (``fcntl.flock``) on ``.tokentrail.lock``
(:meth:`StudyDir.writing`) from before it reads or writes anything in the folder until it
ends, and a second writer is refused at once with the first one's pid, host and start
time. The kernel drops the lock when its process dies, even by SIGKILL, so a crashed run
leaves only the file, which blocks nothing. Readers take no lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import json
import os
import re
import socket
import stat
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tokentrail.spec.errors import InputError
from tokentrail.spec.fileio import TEMPORARY_SUFFIX, atomic_write

MANIFEST = "manifest.json"
LOCK_FILE = ".tokentrail.lock"
FORMAT = "tokentrail-study/1"
_PART = re.compile(r"^part-(\d{6})\.parquet$")
IDENTITY = ("model", "model_revision", "options", "input", "frequencies")  # what a resumed run must share


MAX_MANIFEST_BYTES = 4 << 20  # a manifest holds totals and a few samples: kilobytes
MAX_MANIFEST_DEPTH = 32  # its deepest object is 4 levels down


def _depth(raw: bytes) -> int:
    """How deep JSON text nests (brackets outside strings): checked before parsing, so
    a bomb of ``[[[[…`` cannot exhaust the parser's recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for b in raw:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:  # quote
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif b in (0x5D, 0x7D):
            depth -= 1
    return deepest


def part_name(batch: int) -> str:
    return f"part-{batch:06d}.parquet"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` to ``path``, synced to disk, through :func:`tokentrail.spec.fileio.atomic_write`."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_table(path: Path, table) -> None:
    """An Arrow table as Parquet through :func:`tokentrail.spec.fileio.atomic_write`."""
    with atomic_write(path) as tmp:
        pq.write_table(table, tmp)


class StudyDir:
    """The folder of one study."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.data = self.root / "data"
        self.sample = self.root / "sample"
        self.stats = self.root / "stats"

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE

    def exists(self) -> bool:
        return self.manifest_path.exists()

    # ---- one writer at a time ------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, create: bool = True) -> Iterator[None]:
        """Own the folder for the block: its lock taken (the folder made first when
        ``create`` and missing), or :class:`InputError` at once naming the writer that
        holds it. A folder this call made and nothing else wrote to is removed again."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"--out {self.root} is a file; give a folder")
        if not self.root.exists() and not create:
            yield  # nothing to own; the caller's own checks refuse a missing folder
            return
        made = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a parent that is a file, a read-only place, a full disk
            raise InputError(f"cannot create --out {self.root}: {exc.strerror or exc}") from None
        fd = self._lock()
        try:
            self._probe()
            yield
        finally:
            try:
                if made and [p.name for p in self.root.iterdir()] == [LOCK_FILE]:
                    self.lock_path.unlink()  # still locked: a writer that opened it is refused
                    self.root.rmdir()
            except OSError:
                pass
            os.close(fd)  # releases the lock

    def _probe(self) -> None:
        """Each folder a run writes in, tried with a real file (permissions, a read-only
        mount, a full disk), so a place that cannot be written is refused before any model
        work rather than at the first batch."""
        for folder in (self.root, self.data, self.sample, self.stats):
            if not folder.exists():
                continue
            if not folder.is_dir():
                raise InputError(f"{folder} is not a folder; choose another --out")
            try:
                with tempfile.TemporaryFile(dir=folder) as f:
                    f.write(b"tokentrail")
                    f.flush()
            except OSError as exc:
                raise InputError(f"cannot write in {folder}: {exc.strerror or exc}") from None

    def _lock(self) -> int:
        """The lock file's descriptor, locked and naming this process."""
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:  # the first write into --out: a read-only folder fails here
                raise InputError(f"cannot write in --out {self.root}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise InputError(f"cannot lock {self.lock_path}: {exc.strerror}") from None
                raise InputError(
                    f"the study at {self.root} is being written by {self._owner()}: wait for it or choose another output folder"
                ) from None
            try:
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file its last owner removed after this open
                break
            os.close(fd)
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        except OSError as exc:  # a full disk
            os.close(fd)
            raise InputError(f"cannot write in --out {self.root}: {exc.strerror or exc}") from None
        return fd

    def _owner(self) -> str:
        """Who holds the lock, as its file says (it may be between writes)."""
        try:
            owner = json.loads(self.lock_path.read_text())
            return f"pid {int(owner['pid'])} on {owner['host']} since {owner['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, read with a bound: at most :data:`MAX_MANIFEST_BYTES`, a JSON
        object nested at most :data:`MAX_MANIFEST_DEPTH` deep; anything else is refused
        in one line."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root} is a file, not a study folder (give the folder `tokentrail study` wrote)")
        try:
            with open(self.manifest_path, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise InputError(f"{self.manifest_path} is not a regular file")
                raw = f.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise InputError(f"{self.root} holds no study (no {MANIFEST}); run `tokentrail study` first") from None
        except OSError as exc:
            raise InputError(f"cannot read {self.manifest_path}: {exc.strerror or exc}") from None
        if len(raw) > MAX_MANIFEST_BYTES:
            raise InputError(
                f"{self.manifest_path} is over {MAX_MANIFEST_BYTES:,} bytes; a study's manifest is a few kB: not read"
            )
        if _depth(raw) > MAX_MANIFEST_DEPTH:
            raise InputError(f"{self.manifest_path} nests deeper than {MAX_MANIFEST_DEPTH} levels; not a manifest")
        try:
            manifest = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{self.manifest_path} is not valid JSON ({exc})") from None
        if not isinstance(manifest, dict):
            raise InputError(f"{self.manifest_path} is not a JSON object; not a manifest")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_bytes(self.manifest_path, json.dumps(manifest, indent=1, default=str).encode())

    # ---- starting, resuming --------------------------------------------------------
    def check_new(self) -> None:
        """Refuse to start a fresh run over another study's files (before model work)."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"--out {self.root} is a file; give a folder")
        if self.exists():
            raise InputError(
                f"{self.root} already holds a study: resume it (--resume; resume=True in Python), or choose another output folder"
            )
        if self.data.exists() and any(self.data.iterdir()):
            raise InputError(f"{self.data} already has files; choose an empty --out folder")

    def check_resume(self, identity: dict[str, Any]) -> dict[str, Any]:
        """The manifest to continue, after checking it was made by the same run."""
        manifest = self.read_manifest()
        if manifest.get("format") != FORMAT:
            raise InputError(
                f"{self.root} was written by another version of tokentrail ({manifest.get('format')}); start a new study"
            )
        for key in IDENTITY:
            if manifest.get(key) != identity.get(key):
                raise InputError(
                    f"cannot resume {self.root}: its {key} was {json.dumps(manifest.get(key), default=str)}, "
                    f"this run's is {json.dumps(identity.get(key), default=str)}"
                )
        return manifest

    def prepare(self) -> None:
        """Make the folders; drop temporary files and sample parts of unfinished batches."""
        self.data.mkdir(parents=True, exist_ok=True)
        self.sample.mkdir(parents=True, exist_ok=True)
        self.stats.mkdir(parents=True, exist_ok=True)
        for folder in (self.data, self.sample, self.stats, self.root):
            for p in folder.iterdir():
                if p.name.startswith(".") and (
                    p.name.endswith(TEMPORARY_SUFFIX) or ".tmp-" in p.name
                ):  # .tmp-: older versions
                    p.unlink()
        done = self.done_batches()
        for p in [*self.sample.iterdir(), *self.stats.iterdir()]:
            m = _PART.match(p.name)
            if m and int(m.group(1)) not in done:
                p.unlink()

    def done_batches(self) -> set[int]:
        if not self.data.exists():
            return set()
        return {int(m.group(1)) for p in self.data.iterdir() if (m := _PART.match(p.name))}

    def sample_keys(self) -> list[float]:
        """Sampling keys already written (one per token), to rebuild the reservoir on resume."""
        keys: list[float] = []
        for p in sorted(self.sample.glob("part-*.parquet")):
            keys += set(pq.read_table(p, columns=["key"]).column("key").to_pylist())  # rows per token share a key
        return keys

    # ---- one batch ---------------------------------------------------------------------
    def write_batch(self, batch: int, result: Any) -> None:
        """The sample and stats parts, then the data part (whose presence marks the batch done)."""
        atomic_write_table(self.sample / part_name(batch), result.sample)
        atomic_write_table(self.stats / part_name(batch), result.stats)
        atomic_write_table(self.data / part_name(batch), result.tokens)


class Reservoir:
    """The smallest ``size`` sampling keys seen so far: a token whose key is not below
    :meth:`threshold` can never enter the final sample, so it need not be written."""

    def __init__(self, size: int, keys: Iterable[float] = ()):
        self.size = size
        self._heap: list[float] = []  # max-heap via negation
        for k in keys:
            self.add(k)

    def add(self, key: float) -> None:
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, -key)
        elif key < -self._heap[0]:
            heapq.heapreplace(self._heap, -key)

    def threshold(self) -> float:
        return 1.0 if len(self._heap) < self.size else -self._heap[0]
