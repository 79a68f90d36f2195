"""`ddclip memory ...` on a real memory database, as an engineer reads it after a run (its entry point)."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest

from ddclip_core import save_export
from ddclip_core.memory import ObjectMemory, Sighting
from ddclip_core.stamped import Pose, Stamp
from tests.cli_run import ddclip
from tests.conftest import make_tiny, random_views


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    model = make_tiny(seed=3)
    weights = save_export(model, folder / "weights")
    memory = ObjectMemory(32, identity=model.identity, path=folder / "memory")
    objects = {"mug": (100, "map", 0.2), "chair": (150, "map", 4.0), "ball": (158, "odom", 0.1)}
    for seed, (track, (sec, frame, x)) in enumerate(objects.items()):
        vector = model.encode_views(random_views(2, size=64, seed=seed)).numpy()[0]
        sighting = Sighting(track, Stamp(sec), 2, "camera", Pose(frame, Stamp(sec), (x, 0.0, 0.0)), [(track, 0.3)])
        memory.record([(sighting, vector)])
    memory.close()
    return folder, weights


def test_info_list_query_and_export(run, tmp_path):
    folder, weights = run
    info = ddclip("memory", "info", str(folder / "memory"))
    assert info.returncode == 0 and "objects    3 (3 sightings)" in info.stdout and "map (2), odom (1)" in info.stdout
    recent = json.loads(
        ddclip("memory", "list", str(folder / "memory" / "memory.db"), "--since", "10", "--json").stdout
    )
    assert [o["track_id"] for o in recent] == ["ball", "chair"]  # within 10 s of the newest sighting (158)
    near = ddclip("memory", "list", str(folder / "memory"), "--near", "0,0,0,1", "--frame", "map", "--json")
    assert [o["track_id"] for o in json.loads(near.stdout)] == ["mug"]
    found = ddclip("memory", "query", str(folder / "memory"), "red mug", "--near", "0,0,0,10", "--frame", "map",
                   "--json", "-w", str(weights))  # fmt: skip
    answer = json.loads(found.stdout)
    assert {o["track_id"] for o in answer["objects"]} == {"mug", "chair"} and "1 left out: other frame" in answer[
        "note"
    ]
    other = ddclip(
        "memory", "query", str(folder / "memory"), "red mug", "-w", str(save_export(make_tiny(seed=9), tmp_path / "w"))
    )
    assert other.returncode == 2 and "made with weights" in other.stderr
    assert ddclip("memory", "export", str(folder / "memory"), str(tmp_path / "m.csv"), "--sightings").returncode == 0
    rows = list(csv.DictReader((tmp_path / "m.csv").read_text().splitlines()))
    assert {r["track_id"] for r in rows} == {"mug", "chair", "ball"}
    assert json.loads(rows[0]["sightings_json"])[0]["pose"]["frame_id"] in ("map", "odom")
    assert ddclip("memory", "export", str(folder / "memory"), str(tmp_path / "m.parquet")).returncode == 0
    assert pq.read_table(tmp_path / "m.parquet").num_rows == 3
    missing = ddclip("memory", "info", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no object memory at" in missing.stderr
    memory = str(folder / "memory")
    for args, message in [
        (["--near", "0,0,0", "--frame", "map"], "--near wants four finite numbers X,Y,Z,R"),
        (["--near", "nan,0,0,1", "--frame", "map"], "--near wants four finite numbers"),  # was an empty list
        (["--near", "a,b,c,d", "--frame", "map"], "--near wants four finite numbers"),
        (["--since", "-5"], "--since wants a number of seconds > 0, got -5.0"),  # was an empty list
        (["--since", "inf"], "--since wants a number of seconds > 0"),  # did no filtering
        (["--frame", "map"], "--frame applies to --near"),  # was ignored
    ]:
        refused = ddclip("memory", "list", memory, *args)
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr, args
