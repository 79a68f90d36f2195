"""Bad data-preparation input: each bad file fails alone, with its name, and nothing crashes."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import make_tiny

from ddclip_cli import main
from training.config import TrainConfig
from training.gaussian_data import FuseSettings, write_gaussians
from training.layout import DataError, DataFolder
from training.pack import read_captions
from training.ray_gaussians import ShardRows, gaussians_shard
from training.targets import compute_targets

pytest.importorskip("pybullet", reason="data preparation renders with pybullet (the 'train' extra)")


def test_captions_json_of_the_wrong_shape_is_named(tmp_path):
    (tmp_path / "good.json").write_text('{"u1": "a mug", "u2": ["a cup", "a red cup"]}')
    assert read_captions(tmp_path / "good.json") == {"u1": ["a mug"], "u2": ["a cup", "a red cup"]}
    for text in ('["a mug"]', '{"u1": 5}'):  # a list (was an AttributeError), a number (a TypeError's text)
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(DataError, match="captions JSON must be an object of uid: caption or uid: \\[captions\\]"):
            read_captions(tmp_path / "bad.json")


def test_a_mesh_pybullet_cannot_read_fails_alone_and_a_run_with_nothing_rendered_fails(tmp_path, capsys):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    (meshes / "broken.obj").write_text("garbage\nf 1 2 3\n")  # no vertices: pybullet's loader crashed the process
    assert main(["data", "render", str(meshes), str(tmp_path / "out"), "--views", "2", "--workers", "1"]) == 2
    assert "all 1 object(s) failed" in capsys.readouterr().err
    faces = "f 1 3 2\nf 1 2 4\nf 2 3 4\nf 3 1 4\n"
    (meshes / "tetrahedron.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n" + faces)
    assert main(["data", "render", str(meshes), str(tmp_path / "out"), "--views", "2", "--workers", "1"]) == 0
    assert (tmp_path / "out" / "tetrahedron" / "meta.json").is_file()
    assert not (tmp_path / "out" / "broken").exists()


def _published_folder(root, objects=2):
    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "mv_images.h5", "w") as f:
        f.create_dataset("imgs", data=np.zeros((objects, 2, 3, 224, 224), np.uint8))
    (root / "model_to_idx.json").write_text(json.dumps({f"u{i}": i for i in range(objects)}))
    return root


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("mv_images.h5", b"not hdf5", r"mv_images.h5: not a readable HDF5 file"),
        ("model_to_idx.json", b'{"u0": 0, "u1": true}', r"uid 'u1' maps to row True, outside 0..1"),  # true was row 1
        ("model_to_idx.json", b'{"u0": 0, "u1": 0}', r"model_to_idx.json: row 0 is claimed by 'u0' and 'u1'"),
        ("model_to_idx.json", b'{"u0": 0}', r"model_to_idx.json: 1 of 2 rows have no uid \(first: \[1\]\)"),
        ("model_to_idx.json", b'{"u0": 0, " ": 1}', r"model_to_idx.json: an empty uid maps to row 1"),
        ("model_to_idx.json", b'["u0", "u1"]', r"model_to_idx.json: expected a JSON object uid -> row"),
        ("model_to_idx.json", b'{"u0": 0, ', r"model_to_idx.json: not valid JSON"),
        ("objects.csv", b"name,split\nmug,train\n", r"objects.csv: no 'uid' column"),
        ("objects.csv", b"uid,name\nu0,caf\xe9\n", r"objects.csv: not UTF-8 text"),
        ("captions.json", b'["a mug"]', r"captions.json: expected a JSON object uid -> \[caption, ...\]"),
        ("captions.json", b'{"u0": "a mug"}', r"captions.json: expected a JSON object"),  # a string, not a list
    ],
)
def test_a_data_folder_with_a_bad_file_is_refused_naming_it(tmp_path, name, data, message):
    DataFolder(_published_folder(tmp_path))  # the folder is good before the one file is spoiled
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=message):
        DataFolder(tmp_path)


def test_targets_check_captions_before_the_images_and_leave_no_partial_file(tmp_path):
    data = DataFolder(_published_folder(tmp_path))  # no captions, names or categories
    model = make_tiny()
    with pytest.raises(DataError, match="object 'u0' has neither captions nor a category/name"):
        compute_targets(data, model, progress=False)
    with pytest.raises(ValueError, match="templates must be one of"):
        compute_targets(data, model, templates="fancy", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_to_idx.json", "mv_images.h5"]


def test_a_failed_gaussians_run_leaves_no_partial_file(tmp_path):
    data = DataFolder(_published_folder(tmp_path / "data"))
    for uid in data.uids:  # renders without depth: the first object fails
        (tmp_path / "renders" / uid).mkdir(parents=True)
        (tmp_path / "renders" / uid / "meta.json").write_text("{}")
    with pytest.raises(DataError, match="object 'u0' \\(row 0\\).*no depth"):
        write_gaussians(data, tmp_path / "renders", progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["model_to_idx.json", "mv_images.h5"]
    shard = ShardRows(data.uids[1:], data.root, tmp_path / "shards" / "gaussians-1.h5", first_row=1)
    with pytest.raises(DataError, match="object 'u1' \\(row 1\\)"):  # a Ray shard names the folder's row
        gaussians_shard(shard, tmp_path / "renders", FuseSettings())
    assert not (tmp_path / "shards" / "gaussians-1.h5").exists()


def test_training_configs_and_caption_files_that_do_not_parse_are_named(tmp_path):
    for text, message in [
        ("data: [1,\n", "not valid YAML"),
        ("- 1\n- 2\n", "a training config is a YAML mapping of sections, got list"),
    ]:
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ValueError, match=f"c.yaml: {message}"):
            TrainConfig.load(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match=r"override 'data.batch_size=\[': '\[' is not a YAML value"):
        TrainConfig.load(None, ["data.batch_size=["])
    (tmp_path / "captions.csv").write_bytes(b"uid,caption\nu0,caf\xe9\n")
    with pytest.raises(ValueError, match="captions.csv: not UTF-8 text"):
        read_captions(tmp_path / "captions.csv")


def test_packing_again_retires_what_was_derived_from_the_old_images(tmp_path):
    from training.pack import pack

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    (meshes / "tetrahedron.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 2 3 4\nf 3 1 4\n")
    assert main(["data", "render", str(meshes), str(tmp_path / "renders"), "--views", "2", "--workers", "1"]) == 0
    out = tmp_path / "data"
    assert pack(tmp_path / "renders", out, progress=False) == 1
    for stale in ("image_embeddings.h5", "text_embeddings.h5", "gaussians.h5"):
        (out / stale).write_bytes(b"made from the old images")
    assert pack(tmp_path / "renders", out, progress=False) == 1  # e.g. after rendering again with a new seed
    assert sorted(p.name for p in out.iterdir()) == ["model_to_idx.json", "mv_images.h5", "objects.csv"]
    assert DataFolder(out).uids == ["tetrahedron"]
