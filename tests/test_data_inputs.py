"""Bad data-preparation input: each bad file fails alone, with its name, and nothing crashes."""

from __future__ import annotations

import pytest

from ddclip_cli import main
from training.layout import DataError
from training.pack import read_captions

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
