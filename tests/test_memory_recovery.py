"""The object memory when things go wrong: odd folder names, old folders that cannot all be kept or are
refused, a write that fails halfway, and files that are not memories."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from ddclip_core.identity import WeightsMismatchError
from ddclip_core.memory import ObjectMemory, Sighting
from ddclip_core.memory_store import database_path
from ddclip_core.stamped import Stamp

DIM = 8


def unit(i: int) -> np.ndarray:
    return np.eye(DIM, dtype=np.float32)[i % DIM]


def _old_folder(folder, count: int, weights: str = "w") -> None:
    records = [{"track_id": f"t{i}", "last_seen": float(i), "num_views": 2, "frame_id": "", "name": f"N{i}"}
               for i in range(count)]  # fmt: skip
    meta = {"dim": DIM, "weights_id": weights, "objects": records}
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        folder / "memory.npz", embeddings=np.stack([unit(i) for i in range(count)]), meta=np.array(json.dumps(meta))
    )


@pytest.mark.parametrize("name", ["run#2", "q?x", "a%41b"])
def test_a_read_only_reader_opens_the_memory_whatever_the_folder_is_called(tmp_path, name):
    memory = ObjectMemory(DIM, identity="w", path=tmp_path / name)
    memory.record([(Sighting("mug", Stamp(1, 0), 3), unit(0))])
    memory.close()
    reader = ObjectMemory(DIM, identity="w", path=tmp_path / name, read_only=True)
    assert [o.track_id for o in reader.objects()] == ["mug"]  # before: SQLite cut the path at '#' or '?'
    reader.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # and created a file of the cut name


def test_a_folder_with_a_dot_in_its_name_is_a_folder(tmp_path):
    assert database_path(tmp_path / "robot.v2") == tmp_path / "robot.v2" / "memory.db"
    assert database_path(tmp_path / "mine.db") == tmp_path / "mine.db"
    ObjectMemory(DIM, identity="w", path=tmp_path / "robot.v2").close()
    assert (tmp_path / "robot.v2" / "memory.db").is_file()


def test_an_old_folder_larger_than_max_objects_keeps_the_newest_with_their_names(tmp_path):
    _old_folder(tmp_path, 5)
    memory = ObjectMemory(DIM, max_objects=3, identity="w", path=tmp_path)  # before: KeyError, names lost
    assert {o.track_id: o.name for o in memory.objects()} == {"t2": "N2", "t3": "N3", "t4": "N4"}
    memory.close()
    assert (tmp_path / "memory.npz.migrated").is_file()
    again = ObjectMemory(DIM, max_objects=3, identity="w", path=tmp_path)
    assert {o.track_id: o.name for o in again.objects()} == {"t2": "N2", "t3": "N3", "t4": "N4"}
    again.close()


def test_an_old_folder_of_other_weights_is_refused_at_every_start(tmp_path):
    _old_folder(tmp_path, 2, weights="other")
    for _ in range(2):  # before: the second start opened an empty memory and ignored the old one
        with pytest.raises(WeightsMismatchError):
            ObjectMemory(DIM, identity="w", path=tmp_path)
    assert (tmp_path / "memory.npz").is_file()


@pytest.mark.parametrize(
    ("weights", "dim", "message"),
    [
        (None, DIM, "the object memory records no weights, so its 1 objects cannot be checked"),  # was: adopted
        ("w", 4, "embeddings of 4 dimensions, not 8"),  # before: the bank's 'query dimension' error, unnamed
    ],
)
def test_an_old_folder_that_cannot_be_checked_is_refused_naming_it(tmp_path, weights, dim, message):
    records = [{"track_id": "t0", "last_seen": 0.0, "num_views": 2, "frame_id": "", "name": ""}]
    meta = {"dim": dim, "weights_id": weights, "objects": records}
    np.savez(tmp_path / "memory.npz", embeddings=np.ones((1, dim), np.float32), meta=np.array(json.dumps(meta)))
    with pytest.raises(ValueError, match=f"memory.npz: {message}"):
        ObjectMemory(DIM, identity="w", path=tmp_path)
    meta = {"dim": DIM, "weights_id": "w", "objects": ["not a record"]}
    np.savez(tmp_path / "memory.npz", embeddings=np.ones((1, DIM), np.float32), meta=np.array(json.dumps(meta)))
    with pytest.raises(ValueError, match="memory.npz: corrupt object record"):  # before: AttributeError
        ObjectMemory(DIM, identity="w", path=tmp_path)


def test_a_write_that_fails_halfway_leaves_ram_as_the_database(tmp_path):
    memory = ObjectMemory(DIM, max_objects=2, identity="w", path=tmp_path)
    memory.record([(Sighting("a", Stamp(1, 0), 1), unit(0)), (Sighting("b", Stamp(2, 0), 1), unit(1))])
    add_sighting, calls = memory.store.add_sighting, []

    def disk_full(*args):
        calls.append(args)
        if len(calls) == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return add_sighting(*args)

    memory.store.add_sighting = disk_full
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        memory.record([(Sighting("c", Stamp(3, 0), 1), unit(2)), (Sighting("a", Stamp(4, 0), 5), unit(3))])
    memory.store.add_sighting = add_sighting
    # before: c was in RAM (and a changed) while the database had rolled the batch back
    assert [(o.track_id, o.num_views) for o in memory.objects()] == [("a", 1), ("b", 1)]
    np.testing.assert_array_equal(memory.embedding("a"), unit(0))
    memory.record([(Sighting("d", Stamp(5, 0), 1), unit(4))])  # and it goes on: a evicted, as on disk
    assert [o.track_id for o in memory.objects()] == ["b", "d"]
    memory.close()
    assert [o.track_id for o in ObjectMemory(DIM, identity="w", path=tmp_path).objects()] == ["b", "d"]


def test_a_foreign_sqlite_file_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "memory.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    db.close()
    with pytest.raises(ValueError, match="not a ddclip object memory"):
        ObjectMemory(DIM, identity="w", path=tmp_path)
    with sqlite3.connect(path) as db:  # before: switched to WAL for good before it was refused
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()


def test_forgetting_an_id_twice_with_a_date_forgets_it_once(tmp_path):
    memory = ObjectMemory(DIM, identity="w", path=tmp_path)
    memory.record([(Sighting("a", Stamp(1, 0), 1), unit(0))])
    assert memory.forget(["a", "a"], older_than=Stamp(10, 0)) == ["a"] and len(memory) == 0
    memory.close()


@pytest.mark.parametrize("name", ["robot.v2", "mine.db"])
def test_enrolled_names_are_kept_beside_the_memory_whatever_memory_path_names(tmp_path, name):
    from ddclip_core.perception import Perception, PerceptionConfig
    from tests.conftest import make_tiny, random_views

    model = make_tiny()
    config = PerceptionConfig(memory_path=str(tmp_path / name))
    engine = Perception(model, config)
    engine.enroll("Ana's mug", images=list(random_views(2, size=64)))  # before: FileExistsError, never saved
    engine.close()
    again = Perception(model, config)
    assert "enrolled:Ana's mug" in again.bank
    again.close()


def test_a_memory_with_a_damaged_page_is_refused_at_open_naming_it(tmp_path):
    """Before: about half the damaged copies opened, then failed integrity or a write mid-run, and others
    failed with SQLite's bare 'database disk image is malformed'."""
    good = tmp_path / "good"
    memory = ObjectMemory(DIM, max_objects=2000, identity="w", path=good)
    memory.record([(Sighting(f"t{i}", Stamp(i, 0), 3), unit(i)) for i in range(600)])
    memory.close()
    data = database_path(good).read_bytes()
    pages = len(data) // 4096
    refused = 0
    for page in range(1, pages, max(1, pages // 12)):
        folder = tmp_path / f"damaged{page}"
        folder.mkdir()
        damaged = bytearray(data)
        damaged[page * 4096 : (page + 1) * 4096] = bytes(4096)
        database_path(folder).write_bytes(bytes(damaged))
        try:
            memory = ObjectMemory(DIM, max_objects=2000, identity="w", path=folder)
        except ValueError as exc:
            assert str(database_path(folder)) in str(exc)
            refused += 1
            continue
        memory.record([(Sighting("new", Stamp(10_000, 0), 1), unit(1))])  # opened: then it works on
        memory.store.check()
        memory.close()
    assert refused >= 1
