"""Data preparation and bank building on a real local Ray cluster (2 CPUs, started here once), on real
objects of pybullet_data, against the single-machine path: same files, same numbers, resumable."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import make_tiny

from ddclip_core import load_model, save_export
from ddclip_core.bank import EmbeddingBank
from ddclip_core.bank_build import build_bank
from ddclip_core.bank_ray import build_bank_ray
from ddclip_core.cluster import ModelSpec, connect
from training.catalog import pybullet_objects
from training.data import Item, MultiViewDataset
from training.demo_set import captions_for
from training.gaussian_data import FuseSettings, write_gaussians
from training.layout import CAPTIONS, OBJECTS, UID_MAP, DataError, DataFolder
from training.pack import pack
from training.ray_gaussians import write_gaussians_ray
from training.ray_pack import pack_ray
from training.ray_render import render_all_ray
from training.ray_targets import compute_targets_ray
from training.render import MeshObject, RenderSettings, find_meshes, render_all
from training.targets import compute_targets

ray = pytest.importorskip("ray", reason="the cluster path needs Ray (the 'cluster' extra)")
pytest.importorskip("pybullet", reason="rendering needs pybullet (the 'train' extra)")

ROOT = Path(__file__).resolve().parents[1]
OBJECTS_USED = ["duck", "mug", "lego", "torus"]
TARGET_FILES = {"mv_images.h5": ["imgs"], "image_embeddings.h5": ["img_feat"], "text_embeddings.h5": ["text_feat"]}


@pytest.fixture(scope="module")
def cluster():
    """A real Ray cluster on this machine: 2 CPUs, a 500 MB object store, no dashboard."""
    ray.init(num_cpus=2, object_store_memory=500 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_export(make_tiny(seed=5), tmp_path_factory.mktemp("tiny") / "export")


def _variants() -> tuple[list[MeshObject], dict[str, str], dict[str, list[str]]]:
    catalogue = {obj.uid: obj for obj in pybullet_objects()}
    objects = [catalogue[uid] for uid in OBJECTS_USED]
    splits = {obj.uid: ("val" if i % 3 == 2 else "train") for i, obj in enumerate(objects)}
    return objects, splits, {obj.uid: captions_for(obj) for obj in objects}


def _descendants(name: str) -> list[int]:
    """Processes under this one whose title is ``name`` (Ray names a worker after the task it runs)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = (int(fields[1]), (entry / "cmdline").read_bytes())
            except (OSError, IndexError):
                continue
    found = []
    for pid, (_, cmdline) in parents.items():
        ancestor = pid
        while ancestor in parents and ancestor != os.getpid():
            ancestor = parents[ancestor][0]
        if ancestor == os.getpid() and cmdline.startswith(name.encode()):
            found.append(pid)
    return found


@pytest.fixture(scope="module")
def prepared(cluster, weights, tmp_path_factory):
    """The same objects rendered (with depth), packed and given targets and Gaussians both ways."""
    root = tmp_path_factory.mktemp("prepared")
    objects, splits, captions = _variants()
    settings = RenderSettings(seed=3, depth=True)
    single = render_all(objects, root / "single" / "renders", settings, workers=1, progress=False)
    connect(cluster)
    report = render_all_ray(objects, root / "ray" / "renders", settings, shard_objects=2, progress=False)
    assert (single.rendered, report.rendered, report.failed) == (len(objects), len(objects), 0)
    pack(root / "single" / "renders", root / "single" / "data", splits=splits, captions=captions, progress=False)
    pack_ray(
        root / "ray" / "renders",
        root / "ray" / "data",
        splits=splits,
        captions=captions,
        shard_objects=3,
        progress=False,
    )
    compute_targets(
        DataFolder(root / "single" / "data"),
        load_model(weights, device="cpu"),
        batch_size=4,
        dtype="float32",
        progress=False,
    )
    counts = compute_targets_ray(
        DataFolder(root / "ray" / "data"),
        ModelSpec(str(weights), device="cpu"),
        batch_size=2,
        dtype="float32",
        shard_objects=3,
        actors=1,
        progress=False,
    )
    assert counts == (len(objects) * 12, len(objects) * 4)
    fuse = FuseSettings(max_points=256)
    write_gaussians(DataFolder(root / "single" / "data"), root / "single" / "renders", fuse, progress=False)
    write_gaussians_ray(
        DataFolder(root / "ray" / "data"), root / "ray" / "renders", fuse, shard_objects=3, progress=False
    )
    return root


def test_render_pack_targets_and_gaussians_through_ray_equal_one_machine(prepared):
    single, clustered = prepared / "single", prepared / "ray"
    for obj in OBJECTS_USED:
        for name in ("views.png", "depth.npz", "meta.json"):  # bit for bit
            assert (single / "renders" / obj / name).read_bytes() == (clustered / "renders" / obj / name).read_bytes()
    for name in (UID_MAP, OBJECTS, CAPTIONS):  # same uid order, splits, captions
        assert (single / "data" / name).read_text() == (clustered / "data" / name).read_text()
    for name, datasets in {**TARGET_FILES, "gaussians.h5": None}.items():
        with h5py.File(single / "data" / name) as one, h5py.File(clustered / "data" / name) as many:
            if datasets is None:  # every dataset of the one-machine file, partial clouds included
                datasets = list(one.keys())
                assert "partial_features" in datasets and set(many.keys()) == set(datasets)
            for key in datasets:
                assert many[key].is_virtual and many[key].shape == one[key].shape, (name, key)
                tolerance = 1e-6 if name in ("image_embeddings.h5", "text_embeddings.h5") else 0
                np.testing.assert_allclose(many[key][:], one[key][:], rtol=0, atol=tolerance, err_msg=f"{name}/{key}")
            assert many.attrs.keys() == one.attrs.keys()
            for attr in one.attrs:
                np.testing.assert_array_equal(many.attrs[attr], one.attrs[attr], err_msg=f"{name} attribute {attr}")
            if name == "text_embeddings.h5":
                assert (many["text_offsets"][:] == one["text_offsets"][:]).all()
                assert list(many["captions"].asstr()[:]) == list(one["captions"].asstr()[:])
    # Training reads the sharded folder unchanged.
    data = DataFolder(clustered / "data")
    assert data.uids == sorted(OBJECTS_USED) and [o.split for o in data.objects] == [
        o.split for o in DataFolder(single / "data").objects
    ]
    item = Item(row=1, views=(0, 5, 11), caption=0.5)
    got, expected = MultiViewDataset(data)[item], MultiViewDataset(DataFolder(single / "data"))[item]
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), atol=1e-6)


def test_a_missing_shard_is_refused_and_reruns_replace_shards(prepared, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared / "ray" / "data", data)
    shards = sorted((data / "shards").glob("mv_images-*.h5"))
    assert len(shards) == 2  # 4 objects, 3 per shard
    assert list((data / "shards").glob("targets-*.h5")) and list((data / "shards").glob("gaussians-*.h5"))
    pack_ray(prepared / "ray" / "renders", data, shard_objects=1, progress=False)  # a second run: new shards
    assert not any(shard.exists() for shard in shards) and len(list((data / "shards").glob("mv_images-*"))) == 4
    # the targets and Gaussians of the old images went, and with them their shards (before: kept for good)
    assert sorted(p.name.split("-")[0] for p in (data / "shards").iterdir()) == ["mv_images"] * 4
    next((data / "shards").glob("mv_images-*.h5")).unlink()
    with pytest.raises(DataError, match="shard files are missing"):
        DataFolder(data)


def test_relative_paths_mean_the_drivers_directory_on_the_workers(prepared, tmp_path, monkeypatch):
    shutil.copytree(prepared / "ray" / "renders", tmp_path / "renders")
    monkeypatch.chdir(tmp_path)  # not the directory the workers started in
    assert pack_ray(Path("renders"), Path("data"), shard_objects=2, progress=False) == len(OBJECTS_USED)
    assert DataFolder(tmp_path / "data").num_objects == len(OBJECTS_USED)  # before: shards written elsewhere


def test_a_worker_killed_mid_run_still_renders_every_object_once(cluster, tmp_path):
    connect(cluster)
    catalogue = {obj.uid: obj for obj in pybullet_objects()}
    objects = [
        catalogue[uid]
        for uid in [
            "duck",
            "mug",
            "soccerball",
            "lego",
            "cube",
            "torus",
            "jenga",
            "domino",
            "stone",
            "tray",
            "table",
            "textured_sphere",
        ]
    ]
    out, result, killed = tmp_path / "renders", {}, []
    worker = threading.Thread(
        target=lambda: result.update(
            report=render_all_ray(objects, out, RenderSettings(), shard_objects=3, progress=False)
        )
    )
    worker.start()
    while worker.is_alive() and not killed:
        running = _descendants("ray::render_shard")
        if running and list(out.glob("*/meta.json")):  # mid-run: some objects done, a shard in progress
            os.kill(running[0], signal.SIGKILL)
            killed.append(running[0])
        time.sleep(0.02)
    worker.join()
    assert killed, "the run finished before a worker could be killed"
    report = result["report"]
    assert (report.rendered, report.skipped, report.failed) == (len(objects), 0, 0)
    assert sorted(p.parent.name for p in out.glob("*/meta.json")) == sorted(o.uid for o in objects)
    assert not list(out.rglob("*.tmp")) and not (out / "failures.jsonl").exists()


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "ddclip_cli", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_a_driver_stopped_mid_run_and_restarted_skips_finished_objects(cluster, tmp_path):
    import pybullet_data

    meshes = tmp_path / "meshes"
    source = Path(pybullet_data.getDataPath())
    shutil.copytree(source / "toys", meshes / "toys")
    shutil.copytree(source / "torus", meshes / "torus")
    (meshes / "toys" / "concave_box.urdf").unlink()  # the same uid as concave_box.obj
    for name in ("bunny.obj", "stone.obj", "cube.obj", "soccerball.obj", "sphere_smooth.obj"):
        shutil.copy(source / name, meshes / name)
    total, out = len(find_meshes(meshes)), tmp_path / "renders"
    assert total == 11
    first = _cli("data", "render", str(meshes), str(out), "--ray", cluster)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*/meta.json"))) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.kill()
    first.communicate()
    while _descendants("ray::render_shard") and time.monotonic() < deadline:  # Ray ends the dead job's tasks
        time.sleep(0.1)
    done = len(list(out.glob("*/meta.json")))
    assert 2 <= done < total, f"{done} of {total} objects were rendered before the driver was stopped"
    second = _cli("data", "render", str(meshes), str(out), "--ray", cluster)
    stdout, stderr = second.communicate(timeout=180)
    assert second.returncode == 0, stderr
    assert f"rendered {total - done}, skipped {done} (already done), failed 0" in stdout
    assert len(list(out.glob("*/meta.json"))) == total and not list(out.rglob("*.tmp"))


def test_bank_built_through_ray_equals_the_one_machine_bank(prepared, weights, cluster, tmp_path):
    objects = tmp_path / "objects"
    objects.mkdir()
    for uid in OBJECTS_USED:  # each object a strip of its 12 renders, named in metadata.csv
        shutil.copy(prepared / "ray" / "renders" / uid / "views.png", objects / f"{uid}.png")
    (objects / "metadata.csv").write_text("id,category\n" + "".join(f"{uid},thing {uid}\n" for uid in OBJECTS_USED))
    expected = build_bank(load_model(weights, device="cpu"), objects, num_views=12, batch_size=4, progress=False)
    connect(cluster)
    bank = build_bank_ray(
        ModelSpec(str(weights), device="cpu"),
        objects,
        num_views=12,
        batch_size=2,
        shard_objects=3,
        actors=1,
        progress=False,
    )
    assert bank.weights_id == expected.weights_id and len(bank) == len(OBJECTS_USED)
    ids = sorted(OBJECTS_USED)  # find_objects' order
    assert [bank.metadata(i) for i in ids] == [expected.metadata(i) for i in ids]
    assert bank.metadata("duck")["category"] == "thing duck"
    np.testing.assert_allclose(bank.vectors(), expected.vectors(), rtol=0, atol=1e-6)  # rows in the same order
    bank.save(tmp_path / "bank")
    assert EmbeddingBank.load(tmp_path / "bank").metadata("mug") == expected.metadata("mug")


def test_every_command_takes_ray_and_refuses_random_weights(monkeypatch):
    from ddclip_cli import build_parser

    parser = build_parser()
    for command in (
        ["data", "render", "M", "O"],
        ["data", "pack", "R", "O"],
        ["data", "targets", "D"],
        ["data", "gaussians", "D", "--renders", "R"],
        ["bank", "build", "F", "--out", "B"],
    ):
        assert parser.parse_args([*command, "--ray"]).ray == "auto"
        assert parser.parse_args([*command, "--ray", "10.0.0.1:6379"]).ray == "10.0.0.1:6379"
        assert parser.parse_args(command).ray is None
    args = parser.parse_args(["bank", "build", "F", "--out", "B", "--ray"])
    monkeypatch.delenv("DDCLIP_WEIGHTS", raising=False)
    monkeypatch.setenv("DDCLIP_CACHE", "/nonexistent")  # no downloaded checkpoint either
    with pytest.raises(ValueError, match="--ray needs weights every worker can load"):
        ModelSpec.from_args(args)


def test_the_commands_run_on_the_cluster(prepared, weights, cluster, tmp_path, capsys):
    from ddclip_cli import main

    renders, data, single = prepared / "ray" / "renders", tmp_path / "data", prepared / "single" / "data"
    assert main(["data", "pack", str(renders), str(data), "--ray", cluster]) == 0
    assert main(["data", "targets", str(data), "-w", str(weights), "--device", "cpu", "--ray", cluster]) == 0
    assert main(["data", "gaussians", str(data), "--renders", str(renders), "--points", "256", "--ray", cluster]) == 0
    assert "wrote targets for 4 objects: 48 view and 28 caption embeddings" in capsys.readouterr().out  # 7 templates
    for name, key, tolerance in (("mv_images.h5", "imgs", 0), ("image_embeddings.h5", "img_feat", 2e-3),
                                 ("gaussians.h5", "features", 0)):  # fmt: skip
        with h5py.File(single / name) as one, h5py.File(data / name) as many:
            assert many[key].is_virtual
            np.testing.assert_allclose(many[key][:].astype(np.float32), one[key][:], rtol=0, atol=tolerance)
    strips = tmp_path / "strips"
    strips.mkdir()
    for uid in OBJECTS_USED:
        shutil.copy(renders / uid / "views.png", strips / f"{uid}.png")
    bank = tmp_path / "bank"
    assert main(["bank", "build", str(strips), "-o", str(bank), "-w", str(weights), "--device", "cpu",
                 "--views", "12", "--quiet", "--ray", cluster]) == 0  # fmt: skip
    assert len(EmbeddingBank.load(bank)) == len(OBJECTS_USED)
