"""The object memory on real SQLite files: write-through, sightings, bounds, filters, migration, one
writer at a time, and a writer killed in the middle of its transactions."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from ddclip_core.identity import WeightsMismatchError
from ddclip_core.memory import MemoryFilter, ObjectMemory, Sighting
from ddclip_core.memory_store import MemoryInUse
from ddclip_core.stamped import Pose, Stamp

DIM = 8


def unit(i: int) -> np.ndarray:
    return np.eye(DIM, dtype=np.float32)[i % DIM]


def sighting(track: str, sec: int, views: int = 3, frame: str = "map", x: float = 0.0, names=()) -> Sighting:
    pose = Pose(frame, Stamp(sec, 0), (x, 0.0, 0.0)) if frame else None
    return Sighting(track, Stamp(sec, 500), views, "camera", pose, list(names))


def test_written_through_and_read_back_by_another_process(tmp_path):
    memory = ObjectMemory(DIM, identity="w", path=tmp_path)
    memory.record([(sighting("mug", 10, names=[("a red mug", 0.31)]), unit(0)), (sighting("cup", 11), unit(1))])
    memory.record([(sighting("mug", 20, views=5, x=2.0), unit(0) + 0.1 * unit(2))])
    memory.name("mug", "Ana's mug")
    # No save, no close: a reader in another process sees it all (what SIGKILL leaves on disk).
    reader = subprocess.run(
        [sys.executable, "-c",
         "from ddclip_core.memory import ObjectMemory\n"
         f"m = ObjectMemory({DIM}, path={str(tmp_path)!r}, read_only=True)\n"
         "o = m.get('mug')\n"
         "print(len(m), o.name, o.first_seen.sec, o.last_seen.sec, o.sightings, o.pose.position[0], o.names[0][0])\n"
         "print(len(m.sightings('mug')), m.sightings('mug')[0]['pose'].frame_id)"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert reader.returncode == 0, reader.stderr
    assert reader.stdout.split("\n")[:2] == ["2 Ana's mug 10 20 2 2.0 a red mug", "2 map"]
    memory.close()
    again = ObjectMemory(DIM, identity="w", path=tmp_path)
    mug = again.get("mug")
    assert (mug.num_views, mug.sightings, mug.name, mug.names) == (5, 2, "Ana's mug", [("a red mug", 0.31)])
    np.testing.assert_allclose(
        again.embedding("mug"), (unit(0) + 0.1 * unit(2)) / np.linalg.norm(unit(0) + 0.1 * unit(2))
    )
    again.close()


def test_bounded_overall_and_per_object(tmp_path):
    memory = ObjectMemory(DIM, max_objects=3, identity="w", path=tmp_path, max_sightings=2)
    for second, track in enumerate(["a", "b", "c", "a", "d"]):  # "b" is now the least recently seen
        _, evicted = memory.record([(sighting(track, second), unit(second))])
    assert evicted == ["b"] and {o.track_id for o in memory.objects()} == {"a", "c", "d"}
    for second in range(5, 9):
        memory.record([(sighting("a", second), unit(0))])
    assert memory.get("a").sightings == 6 and len(memory.sightings("a")) == 2  # counted all, kept the last 2
    memory.close()
    assert len(ObjectMemory(DIM, max_objects=3, identity="w", path=tmp_path)) == 3


def test_filters_by_time_place_views_and_name(tmp_path):
    memory = ObjectMemory(DIM, identity="w")
    memory.record([
        (sighting("near-old", 100, x=0.5), unit(0)),
        (sighting("near-new", 200, x=0.2, views=6, names=[("teddy bear", 0.4)]), unit(0)),
        (sighting("far", 210, x=5.0), unit(0)),
        (sighting("odom", 220, frame="odom", x=0.1), unit(0)),
        (sighting("unposed", 230, frame=""), unit(0)),
    ])  # fmt: skip
    ids = lambda where: [o.track_id for o, _ in memory.search(unit(0), 10, where)[0]]  # noqa: E731
    assert set(ids(MemoryFilter(seen_after=Stamp(150)))) == {"near-new", "far", "odom", "unposed"}
    assert ids(MemoryFilter(seen_after=Stamp(150), seen_before=Stamp(205))) == ["near-new"]
    found, left_out = memory.search(unit(0), 10, MemoryFilter(frame="map", centre=(0, 0, 0), radius=1.0))
    assert {o.track_id for o, _ in found} == {"near-old", "near-new"}
    assert left_out == {"other frame": 1, "no pose": 1}  # odom is not transformed, nor guessed
    assert ids(MemoryFilter(min_views=5)) == ["near-new"] and ids(MemoryFilter(name_contains="TEDDY")) == ["near-new"]
    assert "far" not in ids(MemoryFilter(exclude=("far",)))
    assert memory.frames() == {"map": 3, "odom": 1}
    assert memory.forget(older_than=Stamp(205)) == ["near-old", "near-new"] and len(memory) == 3


def test_refusals_name_the_problem(tmp_path):
    ObjectMemory(DIM, identity="w", path=tmp_path).close()
    with pytest.raises(WeightsMismatchError, match="made with weights 'w', not 'other'"):
        ObjectMemory(DIM, identity="other", path=tmp_path)
    with pytest.raises(ValueError, match="embeddings of 8 dimensions, not 4"):
        ObjectMemory(4, identity="w", path=tmp_path)
    db = sqlite3.connect(tmp_path / "memory.db")
    db.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(ValueError, match="schema version 9, this ddclip reads 1"):
        ObjectMemory(DIM, identity="w", path=tmp_path)
    (tmp_path / "memory.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match="memory.db: not a readable object memory"):
        ObjectMemory(DIM, identity="w", path=tmp_path)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE x (y)").connection.commit()
    with pytest.raises(ValueError, match="an SQLite database, but not a ddclip object memory"):
        ObjectMemory(DIM, identity="w", path=other)


def _forget_weights(folder) -> None:
    """What a memory written without an identity (an older script) records: no weights."""
    db = sqlite3.connect(folder / "memory.db")
    db.execute("UPDATE meta SET value = '' WHERE key = 'weights_id'")
    db.commit()
    db.close()


def test_a_memory_without_weights_on_disk_is_never_adopted_with_objects(tmp_path):
    with pytest.raises(ValueError, match="kept on disk records which weights made its embeddings: give identity="):
        ObjectMemory(DIM, path=tmp_path / "new")
    assert ObjectMemory(DIM).weights_id == ""  # in RAM only: nothing to check later
    held, empty = tmp_path / "held", tmp_path / "empty"
    memory = ObjectMemory(DIM, identity="w", path=held)
    memory.record([(sighting("mug", 10), unit(0))])
    memory.close()
    ObjectMemory(DIM, identity="w", path=empty).close()
    _forget_weights(held), _forget_weights(empty)
    with pytest.raises(
        WeightsMismatchError, match="records no weights, so its 1 objects cannot be checked against 'v'"
    ):
        ObjectMemory(DIM, identity="v", path=held)
    assert len(ObjectMemory(DIM, path=held, read_only=True)) == 1  # still readable as it is
    adopted = ObjectMemory(DIM, identity="v", path=empty)  # nothing in it: it becomes v's
    adopted.close()
    with pytest.raises(WeightsMismatchError, match="made with weights 'v', not 'w'"):
        ObjectMemory(DIM, identity="w", path=empty)


def test_two_writers_on_one_memory_are_refused(tmp_path):
    first = ObjectMemory(DIM, identity="w", path=tmp_path)
    with pytest.raises(MemoryInUse, match=r"in use by another running node \(pid \d+\)"):
        ObjectMemory(DIM, identity="w", path=tmp_path)
    first.close()
    ObjectMemory(DIM, identity="w", path=tmp_path).close()  # free again once the first is gone


@pytest.mark.parametrize("layout", ["one file", "two files"])
def test_an_old_memory_folder_is_migrated_once(tmp_path, layout):
    records = [
        {"track_id": "a", "last_seen": 5.25, "num_views": 2, "frame_id": "map", "pose": [1, 2, 3, 0, 0, 0, 1]},
        {"track_id": "b", "last_seen": 6.0, "num_views": 4, "frame_id": "", "pose": [], "name": "B"},
    ]
    meta = {"dim": DIM, "weights_id": "w", "objects": records}
    if layout == "one file":
        np.savez(tmp_path / "memory.npz", embeddings=np.stack([unit(0), unit(1)]), meta=np.array(json.dumps(meta)))
    else:
        np.savez(tmp_path / "memory.npz", embeddings=np.stack([unit(0), unit(1)]))
        (tmp_path / "memory.json").write_text(json.dumps(meta))
    memory = ObjectMemory(DIM, identity="w", path=tmp_path)
    a = memory.get("a")
    assert a.last_seen == Stamp(5, 250_000_000) and a.pose.frame_id == "map" and a.pose.position == (1, 2, 3)
    assert memory.get("b").pose is None and memory.get("b").name == "B"
    memory.close()
    assert (tmp_path / "memory.npz.migrated").is_file() and not (tmp_path / "memory.npz").exists()
    assert len(ObjectMemory(DIM, identity="w", path=tmp_path)) == 2  # read from the database now


def test_a_writer_killed_mid_transaction_leaves_a_consistent_memory(tmp_path):
    """SIGKILL a process that records batches in a loop: the database opens, passes SQLite's integrity
    check, every sighting has its object, and every object has the sightings it counts (up to the bound)."""
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import numpy as np\n"
         "from ddclip_core.memory import ObjectMemory, Sighting\n"
         "from ddclip_core.stamped import Pose, Stamp\n"
         f"m = ObjectMemory({DIM}, max_objects=50, identity='w', path={str(tmp_path)!r}, max_sightings=5)\n"
         "print('writing', flush=True)\n"
         "i = 0\n"
         "while True:\n"
         "    pose = Pose('map', Stamp(i))\n"
         "    batch = [(Sighting(f't{(i + j) % 80}', Stamp(i), 3, 'cam', pose), np.ones(8)) for j in range(8)]\n"
         "    m.record(batch); i += 1\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout.readline().strip() == "writing"
    time.sleep(1.5)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    memory = ObjectMemory(DIM, max_objects=50, identity="w", path=tmp_path, max_sightings=5)
    memory.store.check()
    assert 0 < len(memory) <= 50
    for seen in memory.objects():
        assert len(memory.sightings(seen.track_id)) == min(seen.sightings, 5)
    memory.close()
