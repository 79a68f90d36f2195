"""Meshes -> coloured clouds for GS-CLIP training data, without renders: points sampled on the surface.

The second source of ``ddclip data gaussians`` (``--source mesh``), next to the RGB-D fusion of
``gaussian_data.py``: trimesh samples points uniformly on the mesh surface (area-weighted), each
coloured from the texture at its interpolated UV (``sample_surface(sample_color=True)``), or from the
material colour of an untextured one. pybullet loads the object as for rendering (URDF links assembled,
``euler`` applied: z up, the renders' world frame) and gives each visual shape's pose and colour; the
cloud then goes through the same ``prepare_cloud`` as every other cloud.

Unlike a depth render, the samples cover hidden surfaces too (the inside of a mug, the underside of
a table): the encoder sees more of the object than a camera would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .layout import DataError
from .render import MeshObject

SAMPLES = 100_000  # surface samples per object before voxel averaging: a few per occupied 1/128 voxel


def _visual_parts(obj: MeshObject) -> list:
    """Every visual shape of the object as a trimesh in world coordinates, posed by pybullet (which
    also assembles multi-link URDFs and applies their material colours)."""
    import tempfile

    import pybullet as p
    import trimesh
    from PIL import Image

    from .render import _connect, _load, link_pose

    _connect()
    p.resetSimulation()
    with tempfile.TemporaryDirectory(prefix="ddclip-mesh-") as tmp:
        body = _load(obj, Path(tmp))
        parts = []
        for shape in p.getVisualShapeData(body):
            link, geom, dims, filename, local_pos, local_orn, rgba = shape[1:8]
            filename = filename.decode() if isinstance(filename, bytes) else filename
            if geom == p.GEOM_MESH and filename and Path(filename).is_file():
                mesh = trimesh.load(filename, force="mesh")
                mesh.apply_scale(np.asarray(dims[:3]))
            elif geom == p.GEOM_BOX:
                mesh = trimesh.creation.box(extents=dims[:3])
            elif geom == p.GEOM_SPHERE:
                mesh = trimesh.creation.icosphere(radius=dims[0])
            elif geom in (p.GEOM_CYLINDER, p.GEOM_CAPSULE):
                mesh = trimesh.creation.cylinder(radius=dims[1], height=dims[0])
            else:
                continue
            if not isinstance(mesh, trimesh.Trimesh) or not np.isfinite(mesh.area) or mesh.area <= 0:
                continue  # nothing to sample (degenerate primitives, empty meshes)
            if obj.texture is not None and getattr(mesh.visual, "uv", None) is not None:
                mesh.visual = trimesh.visual.TextureVisuals(uv=mesh.visual.uv,
                                                            image=Image.open(obj.texture).convert("RGB"))  # fmt: skip
            elif not _has_texture(mesh):  # the file's material colour (white if none) tinted by the URDF's
                own = _material_colours(mesh)
                tinted = np.round(np.asarray(own, np.float64) * np.asarray(rgba)).clip(0, 255).astype(np.uint8)
                mesh.visual = trimesh.visual.ColorVisuals(mesh, face_colors=tinted)
            pos, orn = p.multiplyTransforms(*link_pose(body, link), local_pos, local_orn)
            pose = np.eye(4)
            pose[:3, :3] = np.asarray(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
            pose[:3, 3] = pos
            mesh.apply_transform(pose)
            parts.append(mesh)
    if not parts:
        raise DataError(f"{obj.path}: no visual geometry to sample")
    return parts


def _material_colours(mesh) -> np.ndarray:
    """(faces, 4) uint8 colours of an untextured mesh from its file's material; white when it has none."""
    try:
        return np.asarray(mesh.visual.to_color().face_colors) if mesh.visual.kind else _white(mesh)
    except (TypeError, ValueError, AttributeError):  # a material trimesh cannot turn into a colour
        return _white(mesh)


def _white(mesh) -> np.ndarray:
    return np.full((len(mesh.faces), 4), 255, np.uint8)


def _has_texture(mesh) -> bool:
    import trimesh

    visual = mesh.visual
    return (isinstance(visual, trimesh.visual.TextureVisuals) and getattr(visual, "uv", None) is not None
            and getattr(visual.material, "image", None) is not None)  # fmt: skip


def _sample(mesh, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    import trimesh

    points, faces, colours = trimesh.sample.sample_surface(mesh, count, sample_color=True, seed=rng)
    if not _has_texture(mesh):
        colours = mesh.visual.face_colors[faces]
    return np.asarray(points, np.float32), np.asarray(colours, np.float32)[:, :3] / 255.0


def surface_cloud(obj: MeshObject, samples: int = SAMPLES, seed: object = 0) -> tuple[np.ndarray, np.ndarray]:
    """(points (samples, 3) float32, colours (samples, 3) in [0, 1]) on the surface of ``obj``, in the
    frame its renders are made in (z up). Samples are shared among its parts by surface area."""
    parts = _visual_parts(obj)
    areas = np.array([part.area for part in parts], dtype=np.float64)
    if not areas.sum() > 0:
        raise DataError(f"{obj.path}: the surface has no area")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(samples, areas / areas.sum())
    sampled = [_sample(part, int(n), rng) for part, n in zip(parts, counts, strict=True) if n]
    return np.concatenate([p for p, _ in sampled]), np.concatenate([c for _, c in sampled])


def mesh_objects(meshes: Path | None, renders: Path | None) -> dict[str, MeshObject]:
    """{uid: mesh}: the meshes of a folder (uids as ``find_meshes`` and `ddclip data render` name them)
    or, without one, the objects recorded in the renders' meta.json files."""
    import json

    from .render import find_meshes

    if meshes is not None:
        if not meshes.is_dir():
            raise DataError(f"{meshes}: not a folder of meshes")
        return {obj.uid: obj for obj in find_meshes(meshes)}
    if renders is None or not renders.is_dir():
        raise DataError("--source mesh needs --meshes FOLDER (or --renders, whose meta.json name each mesh)")
    found = {}
    for meta in sorted(renders.glob("*/meta.json")):
        recorded = json.loads(meta.read_text())["object"]
        texture = Path(recorded["texture"]) if recorded.get("texture") else None
        found[meta.parent.name] = MeshObject(meta.parent.name, Path(recorded["path"]), recorded.get("name", ""),
                                             recorded.get("category", ""), tuple(recorded.get("euler", (0, 0, 0))),
                                             texture, float(recorded.get("scale", 1.0)))  # fmt: skip
    return found
