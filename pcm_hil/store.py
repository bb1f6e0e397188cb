"""The run store: measurements as tidy tables in one embedded SQLite file.

Every run has a unique id and a settings snapshot (chip and instrument identity,
software version, seed, every parameter). Data are appended batch by batch, each batch
in its own committed transaction (WAL journal, synchronous=FULL), so a run killed midway
keeps everything up to its last completed batch. Tables export to Parquet or CSV.
"""
from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_SQL_TYPES = {"i": "INTEGER", "u": "INTEGER", "b": "INTEGER", "f": "REAL"}


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{what} {name!r} must match [a-z][a-z0-9_]* (at most 63 characters)")
    return name


class RunStore:
    """``RunStore("runs/pcm-hil.sqlite")``; use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                "started REAL NOT NULL, finished REAL, status TEXT NOT NULL, settings TEXT NOT NULL, "
                "result TEXT)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
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
        self._db.execute("INSERT INTO runs VALUES (?, ?, ?, NULL, 'running', ?, NULL)",
                         (run_id, _check_name(kind, "run kind"), time.time(), json.dumps(settings, default=_jsonable)))
        return run_id

    def finish(self, run_id: str, status: str = "done", result: dict[str, Any] | None = None) -> None:
        self._db.execute("UPDATE runs SET finished=?, status=?, result=? WHERE run_id=?",
                         (time.time(), status, json.dumps(result, default=_jsonable) if result else None, run_id))

    def run(self, run_id: str) -> dict[str, Any]:
        row = self._db.execute("SELECT run_id, kind, started, finished, status, settings, result FROM runs "
                               "WHERE run_id=?", (run_id,)).fetchone()
        if row is None:
            raise ValueError(f"no run {run_id!r} in {self.path}")
        return {"run_id": row[0], "kind": row[1], "started": row[2], "finished": row[3], "status": row[4],
                "settings": json.loads(row[5]), "result": json.loads(row[6]) if row[6] else None}

    def runs(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT run_id, kind, started, finished, status FROM runs ORDER BY started",
                                 self._db)

    # -- data ------------------------------------------------------------------------
    def tables(self) -> list[str]:
        rows = self._db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT IN ('runs','meta')")
        return sorted(r[0] for r in rows)

    def append(self, run_id: str, table: str, df: pd.DataFrame) -> None:
        """Append rows to ``table`` for ``run_id`` in one committed transaction."""
        _check_name(table, "table name")
        for c in df.columns:
            _check_name(str(c), "column name")
        if df.empty:
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

    def close(self) -> None:
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
