"""The run store: measurements as tidy tables in one embedded SQLite file.

Every run has a unique id and a settings snapshot (chip and instrument identity,
software version, seed, every parameter). Data are appended batch by batch, each batch
in its own committed transaction (WAL journal, synchronous=FULL), so a run killed midway
keeps everything up to its last completed batch. Tables export to Parquet or CSV.

Cells belong to runs: the ``cell_owners`` table keeps, per chip (``Chip.chip_id()``), the
cell ranges each run claimed when it was created (:class:`CellClaim`). A stored model holds
its cells until a later run names it to overwrite; a calibration, demo or validation run
holds them until it is done. New runs get free cells; a claim of held cells is refused.

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
from dataclasses import dataclass
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
    """Another process is writing this run (or driving this chip)."""


@dataclass(frozen=True)
class CellClaim:
    """The cells a new run asks for on chip ``chip_id`` (``chip_cells`` cells in all):
    ``count`` contiguous cells from ``first``, or (``first=None``) free cells: the first free
    range that holds them (searched from the chip's end with ``from_end``), or on a fragmented
    chip several free ranges (:meth:`RunStore.cells_of` gives them in cell order). ``overwrite`` names a run whose cells may
    be reused; they are taken from it (its ``load`` fails from then on)."""

    chip_id: str
    chip_cells: int
    count: int
    first: int | None = None
    from_end: bool = False
    overwrite: str | None = None

    def __post_init__(self) -> None:
        if type(self.count) is not int or not 1 <= self.count <= self.chip_cells:
            raise ValueError(f"the run needs {self.count} cells; the chip has {self.chip_cells} "
                             f"(accepted: 1 to {self.chip_cells})")
        if self.first is not None and (type(self.first) is not int or self.first < 0
                                       or self.first + self.count > self.chip_cells):
            raise ValueError(f"cells [{self.first}, {self.first + self.count}) do not fit the chip's "
                             f"{self.chip_cells} cells (accepted first cell: 0 to {self.chip_cells - self.count})")


_OWNERS_DDL = ("CREATE TABLE IF NOT EXISTS cell_owners (chip_id TEXT NOT NULL, run_id TEXT NOT NULL, "
               "first INTEGER NOT NULL, stop INTEGER NOT NULL, released_by TEXT)")
# runs recorded before cells had owners, once looked at: where their claims came from
# ('layout', 'config'), or why they have none
_DERIVED_DDL = "CREATE TABLE IF NOT EXISTS cell_owners_derived (run_id TEXT PRIMARY KEY, source TEXT NOT NULL)"
# a run holds its cells while: a stored model not overwritten, or any other run not yet done
_HELD = ("o.released_by IS NULL AND (r.kind = 'store' OR r.status != 'done')")


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"{what} {name!r} must match [a-z][a-z0-9_]* (at most 63 characters)")
    return name


class RunStore:
    """``RunStore("runs/pcm-hil.sqlite")``; use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._locks: dict[str, int] = {}
        self._derivable = True
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise ValueError(f"run directory {self.path.parent} is a file, not a directory (accepted: a directory, "
                             "made if missing)")
        if not self.path.exists():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ValueError(f"cannot make run directory {self.path.parent}: {exc.strerror or exc}") from None
            self._create_new()
        exists = self.path.exists()
        if exists and self.path.stat().st_size == 0:  # sqlite would take it for a new, empty store
            raise ValueError(f"run store {self.path} is empty (0 bytes): truncated or lost, not a store with no "
                             "runs; restore it from a backup, or move it away to start a new store")
        self.read_only = exists and not _writable(self.path)
        if not self.read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.read_only:  # read what is there, write nothing
                self._open_read_only()
                have = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if "cell_owners" not in have:  # a store older than cell owners: its runs' claims, in memory
                    # (only then: a temp table of the same name would hide the store's own)
                    self._db.execute(_OWNERS_DDL.replace("TABLE IF NOT EXISTS", "TEMP TABLE IF NOT EXISTS"))
                    self._db.execute(_DERIVED_DDL.replace("TABLE IF NOT EXISTS", "TEMP TABLE IF NOT EXISTS"))
                elif "cell_owners_derived" not in have:  # nothing derived in a store that cannot be written
                    self._db.execute(_DERIVED_DDL.replace("TABLE IF NOT EXISTS", "TEMP TABLE IF NOT EXISTS"))
                    self._derivable = False
            else:
                self._create()
            version = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"run store {self.path} is not a readable SQLite database: {exc}") from None
        if int(version) != SCHEMA_VERSION:
            raise ValueError(f"run store {self.path} has schema version {version}; this pcm-hil reads {SCHEMA_VERSION}")
        self._derive_claims()

    def _open_read_only(self) -> None:
        uri = self.path.resolve().as_uri()
        try:
            self._db = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None)
            self._db.execute("SELECT count(*) FROM runs").fetchone()
        except sqlite3.OperationalError:  # a WAL store whose directory cannot take the index: read the file as is
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size:
                raise ValueError(f"run store {self.path} is read-only and its last changes are still in {wal.name}: "
                                 "make it writable once (any pcm-hil command merges them)") from None
            self._db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)
            self._db.execute("SELECT count(*) FROM runs").fetchone()

    def _create_new(self) -> None:
        """A new store appears whole: made aside, then linked into place (a process that
        finds the file never sees it half made; of two creators, the first link wins)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        try:
            self._create(tmp)
            self._db.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)

    def _create(self, path: Path | None = None) -> None:
        self._db = sqlite3.connect(path or self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, "
            "started REAL NOT NULL, finished REAL, status TEXT NOT NULL, settings TEXT NOT NULL, "
            "result TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS stages (run_id TEXT NOT NULL, stage TEXT NOT NULL, "
                         "time REAL NOT NULL, info TEXT, PRIMARY KEY (run_id, stage))")
        self._db.execute(_OWNERS_DDL)
        self._db.execute(_DERIVED_DDL)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    # -- runs ------------------------------------------------------------------------
    def create_run(self, kind: str, settings: dict[str, Any], claim: CellClaim | None = None) -> str:
        """Register a run; returns its id (time stamp + random suffix). With ``claim``, the run
        gets its cells in the same transaction (:meth:`cells_of`), or no run is created and
        ``ValueError`` says which runs hold the cells asked for."""
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]
        text = json.dumps(settings, default=_jsonable)
        self._lock(run_id)
        try:
            self._db.execute("BEGIN IMMEDIATE")  # allocation and registration: one writer at a time
            try:
                self._db.execute("INSERT INTO runs VALUES (?, ?, ?, NULL, 'running', ?, NULL)",
                                 (run_id, _check_name(kind, "run kind"), time.time(), text))
                if claim is not None:
                    self._claim(run_id, claim)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except BaseException:
            self._unlock(run_id)
            raise
        return run_id

    # -- cells: which run owns which cells of which chip --------------------------------
    def _held(self, chip_id: str, exclude: str | None = None) -> list[tuple[int, int, str, str, str]]:
        """(first, stop, run, kind, status) of every range held on the chip, sorted."""
        rows = self._db.execute(
            f"SELECT o.first, o.stop, o.run_id, r.kind, r.status FROM cell_owners o JOIN runs r USING (run_id) "
            f"WHERE o.chip_id = ? AND {_HELD} ORDER BY o.first", (chip_id,)).fetchall()
        return [r for r in rows if r[2] != exclude]

    def _claim(self, run_id: str, c: CellClaim) -> None:
        if c.overwrite is not None:
            old = self.run(c.overwrite)
            if not self._db.execute("SELECT 1 FROM cell_owners WHERE run_id=? AND chip_id=? AND released_by IS NULL",
                                    (c.overwrite, c.chip_id)).fetchone():
                raise ValueError(f"--overwrite {c.overwrite}: that {old['kind']} run holds no cells on this chip "
                                 f"({c.chip_id}); see 'pcm-hil runs list'")
            if self.is_written(c.overwrite):
                raise RunLocked(f"--overwrite {c.overwrite}: that run is being written by another process")
        held = self._held(c.chip_id, exclude=c.overwrite)
        if c.first is not None:
            first = c.first
            clash = [h for h in held if h[0] < first + c.count and first < h[1]]
            if clash:
                raise ValueError(f"cells [{first}, {first + c.count}) overlap cells held by "
                                 + ", ".join(f"{k} run {r} [{a}, {b})" for a, b, r, k, _ in clash)
                                 + "; leave out the first cell to get free cells, or name a run to reuse with "
                                   "--overwrite RUN")
        else:
            gaps, at = [], 0
            for a, b, *_ in held:
                if a > at:
                    gaps.append((at, a))
                at = max(at, b)
            if at < c.chip_cells:
                gaps.append((at, c.chip_cells))
            pieces = _allocate(gaps, c.count, c.from_end)
            if not pieces:
                free = sum(b - a for a, b in gaps)
                big = max(gaps, key=lambda g: g[1] - g[0], default=(0, 0))
                raise ValueError(f"the run needs {c.count} cells; {c.chip_id} has {free} of its {c.chip_cells} free"
                                 + (f", in {len(gaps)} range{'s' * (len(gaps) > 1)} (largest [{big[0]}, "
                                    f"{big[1]}): {big[1] - big[0]} cells)" if gaps else "")
                                 + "; free cells with --overwrite RUN (see 'pcm-hil runs list')")
        if c.first is not None:
            pieces = [(first, first + c.count)]
        if c.overwrite is not None:
            self._db.execute("UPDATE cell_owners SET released_by=? WHERE run_id=? AND chip_id=? AND released_by IS NULL",
                             (run_id, c.overwrite, c.chip_id))
        for a, b in pieces:
            self._db.execute("INSERT INTO cell_owners VALUES (?, ?, ?, ?, NULL)", (c.chip_id, run_id, a, b))

    # -- runs recorded before cells had owners --------------------------------------------
    def _derive_claims(self) -> None:
        """Give every run recorded without cell claims (by a pcm-hil older than cell owners) the
        cells it wrote, from what it recorded: a store run the cells of its layout, a calibration
        ``config.first_cell`` and ``config.cells``. Done once per run, in one transaction (in
        memory for a read-only store). Of two such runs on one chip whose cells overlap, the
        later one wrote over the earlier one: the earlier one's claim is released to it (its
        ``load`` fails), unless the runs kept emulated chips of their own (``RUN-chip.npz``)."""
        pending = "SELECT run_id, kind, settings FROM runs WHERE run_id NOT IN (SELECT run_id FROM cell_owners) " \
                  "AND run_id NOT IN (SELECT run_id FROM cell_owners_derived) ORDER BY started"
        if not self._derivable or not self._db.execute(pending).fetchone():
            return
        self._db.execute("BEGIN" if self.read_only else "BEGIN IMMEDIATE")
        try:
            found: list[tuple[str, str, list[tuple[int, int]]]] = []
            for run_id, kind, text in self._db.execute(pending).fetchall():
                settings = json.loads(text)
                chip_id = settings.get("chip_id") if isinstance(settings, dict) else None
                source, ranges = self._recorded_cells(run_id, kind, settings)
                if ranges and not isinstance(chip_id, str):
                    source, ranges = "none: no chip id recorded", []
                for a, b in ranges:
                    self._db.execute("INSERT INTO cell_owners VALUES (?, ?, ?, ?, NULL)", (chip_id, run_id, a, b))
                self._db.execute("INSERT INTO cell_owners_derived VALUES (?, ?)", (run_id, source))
                if ranges and not self.run_file(run_id, "chip").exists():
                    found.append((run_id, chip_id, ranges))
            for k, (early, chip, mine) in enumerate(found):  # written over by a later run recorded the same way
                later = next((r for r, c, theirs in found[k + 1:] if c == chip and any(
                    a < d and c0 < b for a, b in mine for c0, d in theirs)), None)
                if later is not None:
                    self._db.execute("UPDATE cell_owners SET released_by=? WHERE run_id=? AND released_by IS NULL",
                                     (later, early))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _recorded_cells(self, run_id: str, kind: str, settings: Any) -> tuple[str, list[tuple[int, int]]]:
        """(source, ranges) of the cells a run without claims wrote, from its own record."""
        if kind == "store":
            if "layout" not in self.tables():
                return "none: no layout", []
            cells = np.unique(np.array([r[0] for r in self._db.execute(
                "SELECT cell FROM layout WHERE run_id=?", (run_id,))], np.int64))
            return ("layout", _ranges(cells)) if cells.size else ("none: no layout", [])
        if kind == "calibration" and isinstance(settings, dict) and isinstance(settings.get("config"), dict):
            first, n = settings["config"].get("first_cell", 0), settings["config"].get("cells")
            if type(first) is int and type(n) is int and first >= 0 and n > 0:
                return "config", [(first, first + n)]
        return f"none: a {kind} run records no cells", []

    def claim_source(self, run_id: str) -> str | None:
        """Where the claim of a run recorded before cells had owners came from (None: claimed)."""
        row = self._db.execute("SELECT source FROM cell_owners_derived WHERE run_id=?", (run_id,)).fetchone()
        return row[0] if row else None

    def cells_of(self, run_id: str) -> np.ndarray | None:
        """The cells a run claimed, or (runs recorded before cells had owners) wrote; None if neither is known."""
        rows = self._db.execute("SELECT first, stop FROM cell_owners WHERE run_id=? ORDER BY first",
                                (run_id,)).fetchall()
        if not rows:
            return None
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in rows])

    def overwritten_by(self, run_id: str) -> list[str]:
        """The runs that took this run's cells (``--overwrite``)."""
        rows = self._db.execute("SELECT DISTINCT released_by FROM cell_owners WHERE run_id=? AND "
                                "released_by IS NOT NULL", (run_id,))
        return [r[0] for r in rows]

    def cell_map(self) -> pd.DataFrame:
        """Every claim on every chip: chip, first, stop, run, kind, status and whether it holds
        its cells now (``held``) or who took them (``released_by``)."""
        df = pd.read_sql_query(
            f"SELECT o.chip_id, o.first, o.stop, o.run_id, r.kind, r.status, ({_HELD}) AS held, o.released_by, "
            "d.source AS derived FROM cell_owners o JOIN runs r USING (run_id) "
            "LEFT JOIN cell_owners_derived d USING (run_id) ORDER BY o.chip_id, o.first, r.started", self._db)
        df["held"] = df["held"].astype(bool)
        return df

    # -- chips: one process drives a chip at a time ------------------------------------
    def lock_chip(self, chip_id: str) -> None:
        """Take the exclusive lock of chip ``chip_id`` for this process (released on close or
        when the process ends); ``RunLocked`` names the process that drives it."""
        key = _chip_key(chip_id)
        try:
            self._lock(key)
        except RunLocked:
            holder = self._lock_path(key).read_text(errors="replace").strip() or "?"
            raise RunLocked(f"chip {chip_id} is in use by another pcm-hil process (pid {holder}); "
                            "wait for it to end or stop it first") from None

    def chip_file(self, chip_id: str) -> Path:
        """Where an emulated chip of this run directory keeps its cells between processes."""
        return self.path.parent / f"{_chip_key(chip_id)}.npz"

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
        if self.read_only:
            raise ValueError(f"run store {self.path} is read-only: it can be listed, exported and loaded from, "
                             "not written; copy it to a writable directory (or make it writable) to run jobs")
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
        rows = self._db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT IN "
                                "('runs', 'meta', 'cell_owners', 'cell_owners_derived')")
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
        # IF NOT EXISTS: two processes may create the same table at once (a fresh run directory)
        decl = ", ".join(f'"{c}" {_SQL_TYPES.get(df[c].dtype.kind, "TEXT")}' for c in df.columns)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} (run_id TEXT NOT NULL, {decl})")
        self._db.execute(f"CREATE INDEX IF NOT EXISTS {table}_run ON {table}(run_id)")
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


def _writable(path: Path) -> bool:
    """Whether pcm-hil may write the store: the file and its directory writable, and the file
    not marked read-only (no write bit: respected even where root could write it anyway)."""
    return (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)
            and bool(path.stat().st_mode & 0o222))


def _allocate(gaps: list[tuple[int, int]], count: int, from_end: bool) -> list[tuple[int, int]]:
    """``count`` cells from the free ``gaps`` (sorted [first, stop) ranges): the first range
    that holds them all (the last one, its end, with ``from_end``); on a fragmented chip,
    several ranges taken in order (from the end with ``from_end``); [] if too few are free."""
    fits = [(a, b) for a, b in gaps if b - a >= count]
    if fits:
        a, b = fits[-1] if from_end else fits[0]
        return [(b - count, b)] if from_end else [(a, a + count)]
    pieces, left = [], count
    for a, b in (reversed(gaps) if from_end else gaps):
        take = min(left, b - a)
        pieces.append((b - take, b) if from_end else (a, a + take))
        left -= take
        if not left:
            return sorted(pieces)
    return []


def _ranges(cells: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique cells as [first, stop) ranges."""
    if not cells.size:
        return []
    breaks = np.flatnonzero(np.diff(cells) != 1) + 1
    return [(int(p[0]), int(p[-1]) + 1) for p in np.split(cells, breaks)]


def _chip_key(chip_id: str) -> str:
    """A file-name-safe key of a chip id."""
    return "chip-" + re.sub(r"[^A-Za-z0-9=._-]+", "_", chip_id)


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
