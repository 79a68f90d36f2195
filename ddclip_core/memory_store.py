"""The object memory on disk: one SQLite database (WAL), written through, one transaction per batch.

Tables: ``meta`` (format, schema version, dim, the embedding space's weights id), ``objects`` (one row
per remembered object: its latest embedding and state) and ``sightings`` (a bounded history per object:
when, how many views, the pose with its frame and stamp, the best names then). A batch of results is
committed in one transaction before anyone hears of it, so a crash (SIGKILL, a power cut with
``sync="full"``) loses nothing that was announced and never leaves objects without their sightings.

One process writes a memory at a time: the writer holds an exclusive lock on ``<db>.lock``, and a second
node on the same file is refused with the holder's pid. Readers (``ddclip memory ...``) open it
read-only and may run alongside the node.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .stamped import Pose, Stamp

FORMAT, SCHEMA_VERSION = "ddclip-memory", 1
FILE = "memory.db"
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE objects (
    track_id TEXT PRIMARY KEY, marker_id INTEGER NOT NULL UNIQUE, embedding BLOB NOT NULL,
    name TEXT NOT NULL DEFAULT '', first_sec INTEGER, first_nsec INTEGER, last_sec INTEGER, last_nsec INTEGER,
    num_views INTEGER, camera_frame TEXT, pose_frame TEXT, pose_sec INTEGER, pose_nsec INTEGER,
    px REAL, py REAL, pz REAL, qx REAL, qy REAL, qz REAL, qw REAL,
    names TEXT, sightings INTEGER NOT NULL, touched INTEGER NOT NULL
);
CREATE TABLE sightings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    track_id TEXT NOT NULL REFERENCES objects(track_id) ON DELETE CASCADE,
    sec INTEGER, nsec INTEGER, num_views INTEGER, camera_frame TEXT, pose TEXT, names TEXT
);
CREATE INDEX sightings_of_track ON sightings(track_id, id);
"""
OBJECT_COLUMNS = (
    "track_id, marker_id, embedding, name, first_sec, first_nsec, last_sec, last_nsec, num_views, camera_frame, "
    "pose_frame, pose_sec, pose_nsec, px, py, pz, qx, qy, qz, qw, names, sightings, touched"
)


class MemoryInUse(RuntimeError):
    """Another process writes this memory."""


def database_path(path: str | os.PathLike) -> Path:
    """A memory folder (memory_path) or the database file itself -> the database file. A path that does
    not exist yet is a folder unless it ends in ``.db`` (a folder named ``robot.v2`` is a folder)."""
    path = Path(path)
    return path if path.is_file() or (not path.exists() and path.suffix == ".db") else path / FILE


def pose_text(pose: Pose | None) -> str | None:
    return None if pose is None else json.dumps(pose.to_dict())


def pose_of(text: str | None) -> Pose | None:
    return None if not text else Pose.from_dict(json.loads(text))


def pose_columns(pose: Pose | None) -> tuple:
    """A pose as the objects table's columns (frame, sec, nsec, x, y, z, qx, qy, qz, qw): no JSON to parse
    for each of 100 k objects when a node starts."""
    if pose is None:
        return (None,) * 10
    return (pose.frame_id, pose.stamp.sec, pose.stamp.nanosec, *pose.position, *pose.orientation)


def pose_from_columns(frame: str | None, sec: int, nsec: int, *values: float) -> Pose | None:
    return None if frame is None else Pose(frame, Stamp(sec, nsec), tuple(values[:3]), tuple(values[3:]))


class MemoryStore:
    """The database of one memory. ``path=None`` keeps it in RAM (nothing persisted)."""

    def __init__(self, path: str | os.PathLike | None, *, read_only: bool = False, sync: str = "normal") -> None:
        if sync not in ("normal", "full"):
            raise ValueError(f"memory sync must be 'normal' or 'full', got {sync!r}")
        self.path = None if path is None else database_path(path)
        self._lock_file = None
        where = str(self.path) if self.path else ":memory:"
        if self.path is not None and read_only:
            if not self.path.is_file():
                raise FileNotFoundError(f"no object memory at {self.path}")
            uri = f"{self.path.resolve().as_uri()}?mode=ro"  # escaped: '#' or '?' in a folder name
            self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._lock()
            self.db = sqlite3.connect(where, check_same_thread=False, isolation_level=None)
        try:
            self.db.execute("PRAGMA foreign_keys = ON")
            self.meta = self._meta(read_only)  # first: a file that is not a memory is left as it was
            if not read_only:
                if self.path is not None:
                    self.db.execute("PRAGMA journal_mode = WAL")
                    # a damaged page would otherwise open fine and fail a later write, mid-run
                    (result,) = self.db.execute("PRAGMA quick_check").fetchone()
                    if result != "ok":
                        raise sqlite3.DatabaseError(f"damaged: {result}; move it aside or restore a copy")
                self.db.execute(f"PRAGMA synchronous = {sync.upper()}")
        except sqlite3.DatabaseError as exc:
            self.close()
            raise ValueError(f"{where}: not a readable object memory ({exc})") from exc

    def _lock(self) -> None:
        lock = self.path.with_name(self.path.name + ".lock")
        handle = open(lock, "a+")  # noqa: SIM115 - held open for the store's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise MemoryInUse(
                f"{self.path} is in use by another running node (pid {holder}): give each node its own memory_path"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def _meta(self, read_only: bool) -> dict[str, str]:
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables and not read_only:  # one transaction: a crash leaves no memory without its format
            self.db.executescript(
                f"BEGIN IMMEDIATE; {SCHEMA} INSERT INTO meta VALUES ('format', '{FORMAT}'), "
                f"('schema_version', '{SCHEMA_VERSION}'); COMMIT;"
            )
        if "meta" not in tables and tables:
            raise ValueError(f"{self.path}: an SQLite database, but not a ddclip object memory")
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.path}: not a ddclip object memory (format {meta.get('format')!r})")
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise ValueError(
                f"{self.path}: object memory schema version {meta.get('schema_version')}, this ddclip reads "
                f"{SCHEMA_VERSION}"
            )
        return meta

    def set_meta(self, **values: Any) -> None:
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in values.items()])
        self.meta.update({k: str(v) for k, v in values.items()})

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM objects").fetchone()[0]

    def objects(self) -> Iterator[tuple]:
        """Every object row, least recently touched first (see OBJECT_COLUMNS)."""
        yield from self.db.execute(f"SELECT {OBJECT_COLUMNS} FROM objects ORDER BY touched")

    def upsert(self, row: tuple) -> None:
        # An update in place: REPLACE would delete the row first, and its sightings with it (ON DELETE CASCADE).
        marks = ", ".join("?" * len(row))
        updates = ", ".join(f"{c} = excluded.{c}" for c in OBJECT_COLUMNS.replace(" ", "").split(",")[1:])
        insert = f"INSERT INTO objects ({OBJECT_COLUMNS}) VALUES ({marks})"
        self.db.execute(f"{insert} ON CONFLICT(track_id) DO UPDATE SET {updates}", row)

    def add_sighting(self, track_id: str, stamp: Stamp, views: int, camera: str, pose: Pose | None, names: str) -> None:
        self.db.execute(
            "INSERT INTO sightings (track_id, sec, nsec, num_views, camera_frame, pose, names) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (track_id, stamp.sec, stamp.nanosec, views, camera, pose_text(pose), names),
        )

    def trim_sightings(self, track_id: str, keep: int) -> None:
        self.db.execute(
            "DELETE FROM sightings WHERE track_id = ? AND id NOT IN "
            "(SELECT id FROM sightings WHERE track_id = ? ORDER BY id DESC LIMIT ?)",
            (track_id, track_id, keep),
        )

    def rename(self, track_id: str, name: str) -> None:
        self.db.execute("UPDATE objects SET name = ? WHERE track_id = ?", (name, track_id))

    def delete(self, track_ids: Iterable[str]) -> None:
        self.db.executemany("DELETE FROM objects WHERE track_id = ?", [(t,) for t in track_ids])

    def delete_all(self) -> None:
        self.db.execute("DELETE FROM objects")

    def sightings(self, track_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT sec, nsec, num_views, camera_frame, pose, names FROM sightings WHERE track_id = ? ORDER BY id",
            (track_id,),
        )
        return [
            {
                "stamp": Stamp(sec, nsec),
                "num_views": views,
                "camera_frame": camera,
                "pose": pose_of(pose),
                "names": json.loads(names or "[]"),
            }
            for sec, nsec, views, camera, pose, names in rows
        ]

    def check(self) -> None:
        """ValueError unless SQLite finds the file intact and every sighting has its object."""
        (result,) = self.db.execute("PRAGMA integrity_check").fetchone()
        orphans = self.db.execute("SELECT count(*) FROM sightings WHERE track_id NOT IN (SELECT track_id FROM objects)")
        if result != "ok" or orphans.fetchone()[0]:
            raise ValueError(f"{self.path}: corrupt object memory ({result})")

    def close(self) -> None:
        self.db.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def embedding_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()
