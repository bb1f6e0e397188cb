"""The run store: measurements as tidy tables in one embedded SQLite file.

Every run has a unique id and a settings snapshot (chip and instrument identity,
software version, seed, every parameter). Data are appended batch by batch, each batch
in its own committed transaction (WAL journal, synchronous=FULL), so a run killed midway
keeps everything up to its last completed batch. Tables export to Parquet or CSV.

Only the process holding a run's lock writes to it: :meth:`RunStore.create_run` and
:meth:`RunStore.resume_run` take an exclusive ``flock`` on ``.locks/<store>.<run>.lock``; the
kernel releases it when the process ends, SIGKILL included, so a killed run can be resumed
and a running one cannot be written twice.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1
# files a run keeps beside the store, by kind: name suffix
RUN_FILES = {"chip": "-chip.npz", "noise": "-noise.json", "digital": "-digital.pt", "compressed": "-compressed.pt",
             "report": ".png"}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_SQL_TYPES = {"i": "INTEGER", "u": "INTEGER", "b": "INTEGER", "f": "REAL"}


class RunLocked(RuntimeError):
    """Another process is writing this run."""


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{what} {name!r} must match [a-z][a-z0-9_]* (at most 63 characters)")
    return name


class RunStore:
    """``RunStore("runs/pcm-hil.sqlite")``; use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, int] = {}
        try:
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                "started REAL NOT NULL, finished REAL, status TEXT NOT NULL, settings TEXT NOT NULL, "
                "result TEXT)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self._db.execute("CREATE TABLE IF NOT EXISTS stages (run_id TEXT NOT NULL, stage TEXT NOT NULL, "
                             "time REAL NOT NULL, info TEXT, PRIMARY KEY (run_id, stage))")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            version = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"run store {self.path} is not a readable SQLite database: {exc}") from None
        if int(version) != SCHEMA_VERSION:
            raise ValueError(f"run store {self.path} has schema version {version}; this pcm-hil reads {SCHEMA_VERSION}")

    # -- runs ------------------------------------------------------------------------
    def create_run(self, kind: str, settings: dict[str, Any]) -> str:
        """Register a run; returns its id (time stamp + random suffix)."""
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]
        text = json.dumps(settings, default=_jsonable)
        self._lock(run_id)
        self._db.execute("INSERT INTO runs VALUES (?, ?, ?, NULL, 'running', ?, NULL)",
                         (run_id, _check_name(kind, "run kind"), time.time(), text))
        return run_id

    def resume_run(self, run_id: str, kind: str) -> dict[str, Any]:
        """Take the lock of an unfinished run of ``kind`` and mark it running again."""
        info = self.run(run_id)
        if info["kind"] != kind:
            raise ValueError(f"run {run_id} is a {info['kind']} run, not a {kind} run")
        if info["status"] == "done":
            raise ValueError(f"run {run_id} is already done; nothing to resume")
        self._lock(run_id)
        self._db.execute("UPDATE runs SET status='running', finished=NULL WHERE run_id=?", (run_id,))
        return info

    def finish(self, run_id: str, status: str = "done", result: dict[str, Any] | None = None) -> None:
        """Record the outcome (``done``, ``interrupted``, ``failed: ...``) and release the lock."""
        self._check_lock(run_id)
        self._db.execute("UPDATE runs SET finished=?, status=?, result=? WHERE run_id=?",
                         (time.time(), status, json.dumps(result, default=_jsonable) if result else None, run_id))
        self._unlock(run_id)

    # -- locking ---------------------------------------------------------------------
    def _lock(self, run_id: str) -> None:
        if run_id in self._locks:
            return
        path = self._lock_path(run_id)
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLocked(f"run {run_id} is being written by another process (pid {holder}); "
                            "wait for it to end or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._locks[run_id] = fd

    def _unlock(self, run_id: str) -> None:
        fd = self._locks.pop(run_id, None)
        if fd is not None:  # the file stays: unlinking a lock file races with a process opening it
            os.close(fd)

    def _lock_path(self, run_id: str) -> Path:
        return self.path.parent / ".locks" / f"{self.path.name}.{run_id}.lock"

    def _check_lock(self, run_id: str) -> None:
        if run_id not in self._locks:
            raise RunLocked(f"this process does not hold the lock of run {run_id}: "
                            "open it with create_run or resume_run before writing")

    # -- stages: what a resume may skip ------------------------------------------------
    def mark(self, run_id: str, stage: str, info: dict[str, Any] | None = None) -> None:
        """Record that ``stage`` of the run is complete (with what a resume needs of it)."""
        self._check_lock(run_id)
        self._mark(run_id, stage, info)

    def _mark(self, run_id: str, stage: str, info: dict[str, Any] | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?)",
                         (run_id, stage, time.time(), json.dumps(info or {}, default=_jsonable)))

    def stages(self, run_id: str) -> dict[str, dict[str, Any]]:
        rows = self._db.execute("SELECT stage, info FROM stages WHERE run_id=? ORDER BY time", (run_id,))
        return {stage: json.loads(info) for stage, info in rows}

    def run(self, run_id: str) -> dict[str, Any]:
        row = self._db.execute("SELECT run_id, kind, started, finished, status, settings, result FROM runs "
                               "WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            raise ValueError(f"no run {run_id!r} in {self.path}")
        return {"run_id": row[0], "kind": row[1], "started": row[2], "finished": row[3], "status": row[4],
                "settings": json.loads(row[5]), "result": json.loads(row[6]) if row[6] else None}

    def runs(self) -> pd.DataFrame:
        """All runs; a 'running' run whose writer is gone (killed) reads 'killed (resumable)'."""
        df = pd.read_sql_query("SELECT run_id, kind, started, finished, status FROM runs ORDER BY started", self._db)
        gone = (df["status"] == "running") & ~df["run_id"].map(self.is_written)
        df.loc[gone, "status"] = "killed (resumable)"
        return df

    def is_written(self, run_id: str) -> bool:
        """Whether some process (this one included) holds the run's lock now."""
        if run_id in self._locks:
            return True
        path = self._lock_path(run_id)
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    # -- data ------------------------------------------------------------------------
    def tables(self) -> list[str]:
        rows = self._db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT IN ('runs','meta')")
        return sorted(r[0] for r in rows)

    def append(self, run_id: str, table: str, df: pd.DataFrame, stage: str | None = None,
               info: dict[str, Any] | None = None) -> None:
        """Append rows to ``table`` for ``run_id`` in one committed transaction; with ``stage``,
        the stage is marked complete in the same transaction (see :meth:`mark`)."""
        self._check_lock(run_id)
        _check_name(table, "table name")
        for c in df.columns:
            _check_name(str(c), "column name")
        if df.empty:
            if stage:
                self.mark(run_id, stage, info)
            return
        cols = ["run_id", *map(str, df.columns)]
        if table not in self.tables():
            decl = ", ".join(f'"{c}" {_SQL_TYPES.get(df[c].dtype.kind, "TEXT")}' for c in df.columns)
            self._db.execute(f"CREATE TABLE {table} (run_id TEXT NOT NULL, {decl})")
            self._db.execute(f"CREATE INDEX {table}_run ON {table}(run_id)")
        else:
            have = [r[1] for r in self._db.execute(f"PRAGMA table_info({table})")]
            if have != cols:
                raise ValueError(f"table {table} has columns {have[1:]}, got {cols[1:]}")
        rows = zip([run_id] * len(df), *(_column(df[c]) for c in df.columns))
        placeholders = ", ".join("?" * len(cols))
        self._db.execute("BEGIN")
        try:
            self._db.executemany(f"INSERT INTO {table} VALUES ({placeholders})", rows)
            if stage:
                self._mark(run_id, stage, info)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def read(self, run_id: str, table: str) -> pd.DataFrame:
        """All rows of ``table`` for ``run_id`` (without the run_id column)."""
        if _check_name(table, "table name") not in self.tables():
            return pd.DataFrame()
        df = pd.read_sql_query(f"SELECT * FROM {table} WHERE run_id=?", self._db, params=(run_id,))
        return df.drop(columns="run_id")

    def export(self, run_id: str, out_dir: str | Path, fmt: str = "parquet") -> list[Path]:
        """Write every table of the run (and its settings as JSON) to ``out_dir``."""
        if fmt not in ("parquet", "csv"):
            raise ValueError(f"export format must be 'parquet' or 'csv', got {fmt!r}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        info = self.run(run_id)
        written = [out / "run.json"]
        written[0].write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        for table in self.tables():
            df = self.read(run_id, table)
            if df.empty:
                continue
            path = out / f"{table}.{fmt}"
            df.to_parquet(path, index=False) if fmt == "parquet" else df.to_csv(path, index=False)
            written.append(path)
        return written

    def run_file(self, run_id: str, kind: str) -> Path:
        """Where run ``run_id`` keeps its file of ``kind`` (see :data:`RUN_FILES`): the saved
        emulated chip, the noise model used, the digital and compressed state dicts, the report."""
        if kind not in RUN_FILES:
            raise ValueError(f"run file kind must be one of {sorted(RUN_FILES)}, got {kind!r}")
        return self.path.parent / f"{run_id}{RUN_FILES[kind]}"

    def close(self) -> None:
        for run_id in list(self._locks):
            self._unlock(run_id)
        self._db.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _column(s: pd.Series) -> list[Any]:
    kind = s.dtype.kind
    if kind in "iub":
        return s.astype(np.int64).tolist()
    if kind == "f":
        return s.astype(np.float64).tolist()
    return s.astype(str).tolist()


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
