"""Renders -> Gaussians for GS-CLIP training: back-project every view's depth, fuse, prepare, lift.

The renders' depth (``RenderSettings(depth=True)``: ``depth.npz``) is what a robot's RGB-D camera
gives, so the training clouds look like the clouds the robot lifts at run time. Per object: the 12
views are back-projected with their cameras from ``meta.json`` into one world-frame (z up) coloured
cloud, prepared by ``ddclip_core.gaussians.prepare_cloud`` (voxel averaging, point budget, centring
and scale: the same function the engine and the node use), lifted (``lift_points``) and normalised
(``Gaussians.to_features``). Partial clouds, what a robot sees of an object from one side, are made
the same way from 1 or a few of the views (``FuseSettings.partial_views``).

``gaussians.h5`` in the data folder, row i = row i of mv_images.h5 (same uid order):
    features (N, P, 14) float16  encoder input, rows >= counts[i] are zero padding
    counts   (N,) int32          valid Gaussians per object
    centre (N, 3), radius (N,)   float32: world position = features[..., :3] * radius + centre
    partial_features (N, K, P, 14) float16, partial_counts (N, K) int32, partial_centre (N, K, 3),
        partial_radius (N, K): K partial clouds per object, partial k from attrs["partial_views"][k]
        views (a seeded random choice among the object's)
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from ddclip_core.atomic import atomic_path
from ddclip_core.gaussians import CloudSettings, PosedImage, lift_points, points_from_depth, prepare_cloud
from ddclip_core.gaussians.splats import NUM_FEATURES

from .layout import DataError, DataFolder
from .render import DEPTH_FILE, MeshObject

log = logging.getLogger(__name__)

GAUSSIANS = "gaussians.h5"
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # pybullet cameras look down -z with y up


@dataclass
class FuseSettings:
    max_points: int = 4096  # Gaussians per object (fewer when the voxel grid leaves fewer)
    voxel_fraction: float = 1 / 128  # voxel edge as a fraction of the cloud's bounding-box diagonal
    seed: int = 0
    opacity: float = 0.1  # lift_points' initial opacity (3DGS initialisation)
    partial_views: tuple[int, ...] = (1, 3)  # one partial cloud per entry, from that many views; () none

    @property
    def cloud(self) -> CloudSettings:
        """The preprocessing of these clouds, as the encoder trained on them records it."""
        return CloudSettings(self.max_points, self.voxel_fraction, min(16, self.max_points))


def intrinsics(size: int, fov_y_degrees: float) -> np.ndarray:
    """Pinhole K of a square render: pixel (u, v) indices, centres at integers, principal point mid-image."""
    focal = size / 2 / math.tan(math.radians(fov_y_degrees) / 2)
    centre = (size - 1) / 2
    return np.array([[focal, 0.0, centre], [0.0, focal, centre], [0.0, 0.0, 1.0]])


def camera_to_world(world_to_camera: object) -> np.ndarray:
    """OpenCV-axes camera-to-world pose from a stored pybullet (OpenGL) world-to-camera matrix."""
    view = np.asarray(world_to_camera, dtype=np.float64)
    if view.shape != (4, 4):
        raise DataError(f"world_to_camera must be 4x4, got {view.shape}")
    return np.linalg.inv(view) @ OPENGL_TO_OPENCV


def read_render(folder: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(views (V, S, S, 3) uint8, depth (V, S, S) float32, meta) of one rendered object."""
    from PIL import Image

    meta_path, depth_path = folder / "meta.json", folder / DEPTH_FILE
    if not meta_path.is_file():
        raise DataError(f"{folder}: no meta.json (not a rendered object)")
    if not depth_path.is_file():
        raise DataError(
            f"{folder}: no {DEPTH_FILE}; render with depth (`ddclip data render --depth`, "
            "`ddclip data demo-set --gaussians`) before lifting to Gaussians"
        )
    meta = json.loads(meta_path.read_text())
    size, count = int(meta["size"]), int(meta["views"])
    strip = np.asarray(Image.open(folder / "views.png").convert("RGB"))
    with np.load(depth_path, allow_pickle=False) as f:
        depth = f["depth"].astype(np.float32)
    if strip.shape != (count * size, size, 3) or depth.shape != (count, size, size):
        raise DataError(f"{folder}: views {strip.shape} and depth {depth.shape} do not match {count} x {size} px")
    return strip.reshape(count, size, size, 3), depth, meta


def posed_images(views: np.ndarray, cameras: list[dict]) -> list[PosedImage]:
    """A render's views with their cameras, as the refinement takes them (OpenCV world-to-camera, K)."""
    posed = []
    for rgb, camera in zip(views, cameras, strict=True):
        world_to_camera = np.linalg.inv(camera_to_world(camera["world_to_camera"]))
        posed.append(PosedImage(rgb, intrinsics(rgb.shape[0], camera["fov_y_degrees"]), world_to_camera))
    return posed


def fuse_views(views: np.ndarray, depth: np.ndarray, cameras: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Back-project every view (depth 0 = background) into one world-frame cloud: points, colours."""
    points, colours = [], []
    for rgb, z, camera in zip(views, depth, cameras, strict=True):
        if not (z > 0).any():
            continue  # a view that missed the object adds nothing; an all-empty object fails below
        K = intrinsics(rgb.shape[0], camera["fov_y_degrees"])
        p, c = points_from_depth(z, K, rgb, camera_to_world=camera_to_world(camera["world_to_camera"]))
        points.append(p)
        colours.append(c)
    if not points:
        raise DataError("empty point cloud: no view has a valid depth pixel")
    return np.concatenate(points), np.concatenate(colours)


def cloud_features(
    points: np.ndarray, colours: np.ndarray, settings: FuseSettings, seed: object
) -> tuple[np.ndarray, np.ndarray, float]:
    """A raw world-frame cloud -> (features (M, 14) float32, centre (3,), radius) via ``prepare_cloud``."""
    try:
        cloud = prepare_cloud(points, colours, settings.cloud, seed=seed)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    features = lift_points(cloud.points, cloud.colours, opacity=settings.opacity).to_features()
    return features, cloud.centre, cloud.scale


def _seed(settings: FuseSettings, name: str, *more: int) -> list[int]:
    # Seeded per object, so re-running the preparation gives the same file.
    return [settings.seed, *name.encode(), *more]


def object_features(folder: Path, settings: FuseSettings) -> tuple[np.ndarray, np.ndarray, float]:
    """One rendered object, all views fused -> (features (M, 14) float32 with M <= max_points, centre, radius)."""
    views, depth, meta = read_render(folder)
    points, colours = fuse_views(views, depth, meta["cameras"])
    try:
        return cloud_features(points, colours, settings, _seed(settings, folder.name))
    except DataError as exc:
        raise DataError(f"{folder}: {exc}") from exc


def mesh_features(obj: MeshObject, settings: FuseSettings) -> tuple[np.ndarray, np.ndarray, float]:
    """One mesh, points sampled on its surface with texture colours -> (features, centre, radius)."""
    from .gaussian_mesh import surface_cloud

    try:
        points, colours = surface_cloud(obj, seed=_seed(settings, obj.uid, 3))
        return cloud_features(points, colours, settings, _seed(settings, obj.uid))
    except (DataError, ValueError, RuntimeError, OSError) as exc:
        raise DataError(f"{obj.path}: {exc}") from exc


def partial_features(folder: Path, settings: FuseSettings) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """One rendered object's partial clouds, (features, centre, radius) of ``settings.partial_views[k]``
    random views each."""
    views, depth, meta = read_render(folder)
    rng = np.random.default_rng(_seed(settings, folder.name, 1))
    out = []
    for count in settings.partial_views:
        if not 1 <= count <= len(views):
            raise DataError(f"{folder}: a partial cloud of {count} views, but the object has {len(views)}")
        # Views that see the object: a partial cloud of nothing says nothing.
        seen = [i for i in range(len(views)) if (depth[i] > 0).sum() >= settings.cloud.min_points]
        chosen = sorted(rng.choice(seen or range(len(views)), min(count, max(1, len(seen))), replace=False))
        points, colours = fuse_views(views[chosen], depth[chosen], [meta["cameras"][i] for i in chosen])
        try:
            out.append(cloud_features(points, colours, settings, _seed(settings, folder.name, 2, count)))
        except DataError as exc:
            raise DataError(f"{folder}: partial cloud of {count} views: {exc}") from exc
    return out


def write_gaussians(
    data: DataFolder, renders: Path | None, settings: FuseSettings | None = None, progress: bool = True,
    meshes: dict[str, MeshObject] | None = None, first_row: int = 0,
) -> Path:  # fmt: skip
    """Lift every object of ``data``; write ``gaussians.h5``. first_row: the row in the whole data folder
    of ``data``'s first object (a Ray shard's offset), what errors name.

    Source: the RGB-D render in ``renders/<uid>`` (full and partial clouds), or with ``meshes`` ({uid:
    mesh}) points sampled on each mesh's surface (``gaussian_mesh.py``; no partial clouds: no cameras).
    """
    settings = settings or FuseSettings()
    if settings.max_points < 4:
        raise ValueError(f"max_points must be >= 4, got {settings.max_points}")
    if meshes is not None:
        settings = replace(settings, partial_views=())
        missing = [uid for uid in data.uids if uid not in meshes]
        where = "the meshes"
    elif renders is None:
        raise ValueError("give the renders folder (RGB-D source) or the meshes (surface-sampling source)")
    else:
        missing = [uid for uid in data.uids if not (renders / uid / "meta.json").is_file()]
        where = str(renders)
    if missing:
        raise DataError(f"{where}: nothing for {len(missing)} objects of {data.root} (e.g. {missing[0]!r})")
    out = data.path(GAUSSIANS)
    n, p = data.num_objects, settings.max_points
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:  # a failed object leaves no partial file
        feats = f.create_dataset("features", (n, p, NUM_FEATURES), np.float16, chunks=(1, p, NUM_FEATURES))
        counts = f.create_dataset("counts", (n,), np.int32)
        centres = f.create_dataset("centre", (n, 3), np.float32)
        radii = f.create_dataset("radius", (n,), np.float32)
        k = len(settings.partial_views)
        if k:
            partial = f.create_dataset("partial_features", (n, k, p, NUM_FEATURES), np.float16,
                                       chunks=(1, 1, p, NUM_FEATURES))  # fmt: skip
            partial_counts = f.create_dataset("partial_counts", (n, k), np.int32)
            partial_centres = f.create_dataset("partial_centre", (n, k, 3), np.float32)
            partial_radii = f.create_dataset("partial_radius", (n, k), np.float32)
        for row, uid in enumerate(tqdm(data.uids, desc="gaussians", unit="obj", disable=not progress)):
            try:
                if meshes is not None:
                    features, centre, radius = mesh_features(meshes[uid], settings)
                    parts = []
                else:
                    features, centre, radius = object_features(renders / uid, settings)
                    parts = partial_features(renders / uid, settings)
            except DataError as exc:
                raise DataError(f"object {uid!r} (row {first_row + row}): {exc}") from exc
            feats[row], counts[row], centres[row], radii[row] = _padded(features, p), len(features), centre, radius
            for j, (part, centre, radius) in enumerate(parts):
                partial[row, j], partial_counts[row, j] = _padded(part, p), len(part)
                partial_centres[row, j], partial_radii[row, j] = centre, radius
        f.attrs.update(max_points=p, voxel_fraction=settings.voxel_fraction, seed=settings.seed,
                       source="rgbd" if meshes is None else "mesh",
                       partial_views=list(settings.partial_views), cloud=settings.cloud.to_json())  # fmt: skip
    log.info("wrote %s: %d objects x up to %d Gaussians", out, n, p)
    return out


def _padded(features: np.ndarray, points: int) -> np.ndarray:
    padded = np.zeros((points, NUM_FEATURES), np.float16)
    padded[: len(features)] = features
    return padded


def read_gaussians_h5(data: DataFolder) -> tuple[int, int]:
    """Check ``gaussians.h5`` against the data folder; returns (max points P, feature count 14)."""
    path = data.path(GAUSSIANS)
    if not path.is_file():
        raise DataError(f"{data.root}: no {GAUSSIANS} (run `ddclip data gaussians` first)")
    with h5py.File(path, "r") as f:
        for key in ("features", "counts"):
            if key not in f:
                raise DataError(f"{path}: no dataset {key!r}")
        shape, counts = f["features"].shape, f["counts"][:]
    if len(shape) != 3 or shape[0] != data.num_objects or shape[2] != NUM_FEATURES:
        raise DataError(f"{path}: features {shape} do not match {data.num_objects} objects x P x {NUM_FEATURES}")
    if counts.shape != (data.num_objects,) or (counts < 1).any() or (counts > shape[1]).any():
        raise DataError(f"{path}: counts must be in 1..{shape[1]} for each of {data.num_objects} objects")
    return int(shape[1]), int(shape[2])
