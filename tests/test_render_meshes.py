"""Rendering reads each mesh file once, and frames it by the same bounds a second parse would give."""

from __future__ import annotations

import numpy as np
import pytest

from training import render
from training.render import MeshObject, RenderSettings, render_object

pytest.importorskip("pybullet", reason="data preparation renders with pybullet (the 'train' extra)")
trimesh = pytest.importorskip("trimesh")

FACES = "f 1 3 2\nf 1 2 4\nf 2 3 4\nf 3 1 4\n"


def _count_loads(monkeypatch) -> list[str]:
    loads: list[str] = []
    original = trimesh.load

    def counting(path, *args, **kwargs):
        loads.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(trimesh, "load", counting)
    return loads


@pytest.mark.parametrize("suffix", [".obj", ".glb"])
def test_a_mesh_is_parsed_once_and_framed_by_its_true_bounds(tmp_path, monkeypatch, suffix):
    mesh = trimesh.Trimesh(vertices=[[0, 0, 0], [2, 0, 0], [0, 1, 0], [0, 0, 3]], faces=[[0, 2, 1], [0, 1, 3]])
    path = tmp_path / f"wedge{suffix}"
    if suffix == ".glb":  # a scene-graph transform: the bounds must include it, as the exported OBJ does
        scene = trimesh.Scene()
        scene.add_geometry(mesh, transform=trimesh.transformations.translation_matrix([5, 0, 0]))
        scene.export(path)
    else:
        path.write_text("v 0 0 0\nv 2 0 0\nv 0 1 0\nv 0 0 3\n" + FACES)
    loads = _count_loads(monkeypatch)
    _, cameras, _ = render_object(MeshObject("wedge", path, scale=0.5), RenderSettings(views=1, size=32))
    assert loads == [str(path)]  # before: parsed again (the OBJ, or the converted mesh) to measure it
    shift = 5 if suffix == ".glb" else 0
    expected = (np.array([shift, 0, 0]) + np.array([shift + 2, 1, 3])) / 2 * 0.5
    np.testing.assert_allclose(cameras[0]["target"], expected, atol=1e-6)


def test_bounds_from_the_parse_equal_a_fresh_parse(tmp_path):
    import pybullet as p

    path = tmp_path / "wedge.obj"
    path.write_text("v 0 0 0\nv 2 0 0\nv 0 1 0\nv 0 0 3\n" + FACES)
    render._connect("tiny")
    p.resetSimulation()
    parsed: dict[str, np.ndarray] = {}
    body = render._load(MeshObject("wedge", path, scale=2.0), tmp_path, parsed)
    low, high = render.body_bounds(body, parsed)
    fresh_low, fresh_high = render.body_bounds(body)
    np.testing.assert_allclose(low, fresh_low)
    np.testing.assert_allclose(high, fresh_high)
    np.testing.assert_allclose(high - low, [4, 2, 6])
