"""The durable side of the job table: one SQLite database (the standard library's) plus one
folder per job under `server.state_dir`, so a restart or a crash loses nothing accepted.

A job's row holds what the table reports (status, times, error), what it needs to run the job
again (`spec`, with the request's images in the job's folder) and, once it has finished, the
`manifest` of its result files. Files are written atomically (a temporary name, then a
rename), before the row that names them, so a row never points at a half-written file.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order: the queue's order on restart
    id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    completed REAL,
    attempts INTEGER NOT NULL DEFAULT 0,  -- runs a restart cut short
    step INTEGER NOT NULL DEFAULT 0,  -- progress when it ended
    total INTEGER NOT NULL DEFAULT 0,
    spec TEXT,  -- JSON: the request, how to encode it, the surface's meta
    resumable INTEGER NOT NULL DEFAULT 0,  -- a restart runs it again (its client polls by id)
    error TEXT,  -- JSON
    manifest TEXT,  -- JSON: the result's description, naming its files
    expired INTEGER NOT NULL DEFAULT 0  -- past retention: answers 410, files gone
)
"""
_INPUTS = "inputs"


@dataclass(frozen=True)
class JobRecord:
    """One stored job, as a restart finds it."""

    id: str
    kind: str
    status: str
    created: float
    started: float | None
    completed: float | None
    attempts: int
    step: int
    total: int
    resumable: bool
    spec: dict[str, Any] | None
    error: dict[str, Any] | None
    manifest: dict[str, Any] | None
    expired: bool


class StateDirBusy(RuntimeError):
    """Another live server holds the state folder (two job workers would run one queue)."""


class JobStore:
    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._owner = _hold(self.folder / "lock")
        self._lock = threading.Lock()
        # One connection shared by the request threads and the worker, behind the lock.
        self._db = sqlite3.connect(self.folder / "jobs.sqlite3", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")  # readers of other processes never block
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def job_folder(self, job_id: str) -> Path:
        return self.folder / "jobs" / job_id

    # -- writes -------------------------------------------------------------------------------

    def add(
        self,
        job_id: str,
        kind: str,
        created: float,
        spec: Mapping[str, Any] | None,
        arrays: Mapping[str, np.ndarray] | None = None,
        resumable: bool = False,
    ) -> None:
        """A newly accepted (queued) job; `arrays` are its request's images."""
        for name, array in (arrays or {}).items():
            _write_atomically(self.job_folder(job_id) / _INPUTS / f"{name}.npy", _npy(array))
        self._execute(
            "INSERT INTO jobs (id, kind, status, created, spec, resumable) "
            "VALUES (?, ?, 'queued', ?, ?, ?)",
            (job_id, kind, created, _dumps(spec), int(resumable)),
        )

    def started(self, job_ids: list[str], when: float) -> None:
        self._executemany(
            "UPDATE jobs SET status = 'generating', started = ? WHERE id = ?",
            [(when, job_id) for job_id in job_ids],
        )

    def finished(
        self,
        job_id: str,
        status: str,
        when: float,
        error: Mapping[str, Any] | None,
        files: Mapping[str, bytes] | None = None,
        manifest: Mapping[str, Any] | None = None,
        progress: tuple[int, int] = (0, 0),
    ) -> None:
        """The job's end: its result files first, then the row; its inputs are dropped."""
        folder = self.job_folder(job_id)
        for name, data in (files or {}).items():
            _write_atomically(folder / name, data)
        self._execute(
            "UPDATE jobs SET status = ?, completed = ?, error = ?, manifest = ?, step = ?, "
            "total = ? WHERE id = ?",
            (status, when, _dumps(error), _dumps(manifest), *progress, job_id),
        )
        shutil.rmtree(folder / _INPUTS, ignore_errors=True)

    def requeue(self, job_id: str) -> None:
        """Back to the queue after a run a restart cut short (counted in `attempts`)."""
        self._execute(
            "UPDATE jobs SET status = 'queued', started = NULL, attempts = attempts + 1 "
            "WHERE id = ?",
            (job_id,),
        )

    def expire(self, job_id: str) -> None:
        """Past retention: the row stays (410) without its files."""
        self._execute("UPDATE jobs SET expired = 1, manifest = NULL WHERE id = ?", (job_id,))
        shutil.rmtree(self.job_folder(job_id), ignore_errors=True)

    def forget(self, job_id: str) -> None:
        self._execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        shutil.rmtree(self.job_folder(job_id), ignore_errors=True)

    # -- reads --------------------------------------------------------------------------------

    def records(self) -> list[JobRecord]:
        """Every stored job, in submission order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, status, created, started, completed, attempts, step, total, "
                "resumable, spec, error, manifest, expired FROM jobs ORDER BY seq"
            ).fetchall()
        return [
            JobRecord(
                *row[:9],
                bool(row[9]),
                *(json.loads(v) if v else None for v in row[10:13]),
                bool(row[13]),
            )
            for row in rows
        ]

    def inputs(self, job_id: str) -> dict[str, np.ndarray]:
        folder = self.job_folder(job_id) / _INPUTS
        if not folder.is_dir():
            return {}
        return {path.stem: np.load(path, allow_pickle=False) for path in folder.glob("*.npy")}

    def read(self, job_id: str, name: str) -> bytes:
        return (self.job_folder(job_id) / name).read_bytes()

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._owner.close()  # releases the folder

    # -- internals ----------------------------------------------------------------------------

    def _execute(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock, self._db:  # one transaction, committed on exit
            self._db.execute(sql, args)

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self._lock, self._db:
            self._db.executemany(sql, rows)


def _hold(path: Path):
    """An exclusive lock on `path` for this process's lifetime (the kernel drops it when the
    process dies, so a crash never leaves the folder locked)."""
    file = open(path, "a+")  # noqa: SIM115 - held open until close()
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "?"
        file.close()
        raise StateDirBusy(
            f"server.state_dir {path.parent} is in use by another server (pid {holder}); "
            "give each server its own state_dir"
        ) from None
    file.truncate(0)
    file.write(str(os.getpid()))
    file.flush()
    return file


def _dumps(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    """Whole or absent: a crash mid-write leaves a temporary file, never a short one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
