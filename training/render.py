"""Render meshes to 12 views on white with pybullet's TinyRenderer (CPU, headless).

Cameras follow the published renders (Zero123 style): directions random on the sphere, distance
varying with the object's size, looking at the centre of the object's bounds. Each object is
written to ``<out>/<uid>/views.png`` (a vertical strip of the views) and ``<out>/<uid>/meta.json``
(source, name, cameras as 4x4 world-to-camera matrices and the vertical field of view) so later
steps (packing, Gaussian lifting) have the poses. With ``RenderSettings(depth=True)`` each object also
gets ``depth.npz``: ``depth`` (views, size, size) float16 metric z-depth along the camera axis, 0 on
the background, for back-projecting the views to a point cloud (``training/gaussian_data.py``).
Finished objects are skipped, so an interrupted run resumes; a failure is logged to
``failures.jsonl`` and counted, never fatal.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import multiprocessing
import tempfile
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from ddclip_core.atomic import atomic_path, write_text_atomically

log = logging.getLogger(__name__)

RENDERERS = ("tiny", "egl")
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".urdf")
FOV_DEGREES = 49.1  # Zero123's renders: a 35 mm lens on a 32 mm sensor
DISTANCE_RANGE = (0.8, 1.15)  # camera distance, in multiples of the distance where the bounding sphere fits
MAX_ELEVATION = math.radians(80)  # keep the up vector well defined
DEPTH_FILE = "depth.npz"


@dataclass
class MeshObject:
    """One object to render.

    path: a URDF, or a mesh (GLB/GLTF/OBJ/PLY/STL). euler: rotation applied first (radians), e.g.
        (pi/2, 0, 0) stands up a Y-up mesh. texture: an image wrapped on a mesh that has UVs but no
        material of its own (robosuite's objects). name: what the object is, for captions/labels.
    """

    uid: str
    path: Path
    name: str = ""
    category: str = ""
    euler: tuple[float, float, float] = (0.0, 0.0, 0.0)
    texture: Path | None = None
    scale: float = 1.0

    def to_json(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        data["texture"] = None if self.texture is None else str(self.texture)
        return data


@dataclass
class RenderSettings:
    views: int = 12
    size: int = 224
    seed: int = 0
    fov: float = FOV_DEGREES
    distance: tuple[float, float] = DISTANCE_RANGE
    depth: bool = False  # also write depth.npz (metric z-depth per view) for Gaussian lifting
    renderer: str = "tiny"  # "tiny": TinyRenderer (CPU); "egl": pybullet's OpenGL renderer over EGL (GPU)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.renderer not in RENDERERS:
            raise ValueError(f"renderer must be one of {RENDERERS}, got {self.renderer!r}")


@dataclass
class RenderReport:
    rendered: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"rendered {self.rendered}, skipped {self.skipped} (already done), failed {self.failed} "
            f"in {self.seconds:.1f} s"
        )


def find_meshes(folder: Path, up: str = "auto") -> list[MeshObject]:
    """Every mesh or URDF under ``folder``; uid = relative path without suffix, name = file stem.

    up: "z", "y" or "auto" (glTF is Y-up by specification; other formats are taken as Z-up).
    """
    objects = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in MESH_SUFFIXES or not path.is_file():
            continue
        uid = path.relative_to(folder).with_suffix("").as_posix().replace("/", "__")
        y_up = up == "y" or (up == "auto" and path.suffix.lower() in (".glb", ".gltf"))
        name = path.stem.replace("_", " ").replace("-", " ")
        objects.append(MeshObject(uid, path, name, name, (math.pi / 2, 0.0, 0.0) if y_up else (0.0, 0.0, 0.0)))
    return objects


def is_done(out: Path, uid: str, depth: bool = False) -> bool:
    done = (out / uid / "meta.json").is_file() and (out / uid / "views.png").is_file()
    return done and (not depth or (out / uid / DEPTH_FILE).is_file())


def render_all(
    objects: Sequence[MeshObject],
    out: Path,
    settings: RenderSettings | None = None,
    workers: int = 1,
    progress: bool = True,
) -> RenderReport:
    """Render every object not yet done into ``out``; parallel over ``workers`` processes."""
    settings = settings or RenderSettings()
    out.mkdir(parents=True, exist_ok=True)
    report = RenderReport()
    todo = pending(objects, out, settings, report)
    start = time.perf_counter()
    jobs = [(obj, out, settings) for obj in todo]
    with tqdm(total=len(jobs), desc="render", unit="obj", disable=not progress) as bar:
        for uid, error in _run(jobs, workers):
            bar.update()
            record(report, out, uid, error)
    report.seconds = time.perf_counter() - start
    return report


def pending(objects: Sequence[MeshObject], out: Path, settings: RenderSettings, report: RenderReport) -> list:
    """The objects not rendered yet; the finished ones are counted as skipped."""
    todo = []
    for obj in objects:
        if is_done(out, obj.uid, settings.depth):
            report.skipped += 1
        else:
            todo.append(obj)
    return todo


def record(report: RenderReport, out: Path, uid: str, error: str | None) -> None:
    """Count one finished object; a failure is logged and appended to ``out/failures.jsonl``."""
    if error is None:
        report.rendered += 1
        return
    report.failed += 1
    report.failures.append(uid)
    log.warning("render failed for %s: %s", uid, error.splitlines()[-1])
    with (out / "failures.jsonl").open("a") as f:
        f.write(json.dumps({"uid": uid, "error": error, "time": time.time()}) + "\n")


def _run(jobs: list, workers: int) -> Iterable[tuple[str, str | None]]:
    renderer = jobs[0][2].renderer if jobs else "tiny"
    if workers <= 1 or len(jobs) <= 1:
        _connect(renderer)
        yield from map(render_job, jobs)
        return
    # spawn: pybullet's client state must not be shared through fork, and torch may be loaded.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_connect, initargs=(renderer,)) as pool:
        yield from pool.imap_unordered(render_job, jobs)


_egl_plugin: list[int] = []  # loaded once per process


def _connect(renderer: str = "tiny") -> None:
    import pybullet as p

    if not p.isConnected():
        p.connect(p.DIRECT)
    if renderer == "egl" and not _egl_plugin:
        spec = importlib.util.find_spec("eglRenderer")
        plugin = p.loadPlugin(spec.origin, "_eglRendererPlugin") if spec and spec.origin else -1
        if plugin < 0:
            raise RuntimeError(
                "pybullet's EGL renderer plugin could not be loaded (no EGL driver); use renderer 'tiny'"
            )
        _egl_plugin.append(plugin)


def render_job(job: tuple[MeshObject, Path, RenderSettings]) -> tuple[str, str | None]:
    obj, out, settings = job
    try:
        views, cameras, depths = render_object(obj, settings)
        _write(out, obj, views, cameras, settings, depths)
        return obj.uid, None
    except Exception:  # one bad mesh must not stop a data set of thousands
        return obj.uid, traceback.format_exc(limit=3)


def _write(
    out: Path, obj: MeshObject, views: np.ndarray, cameras: list[dict], settings: RenderSettings,
    depths: np.ndarray | None = None,
) -> None:  # fmt: skip
    folder = out / obj.uid
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp"):  # left by a worker killed mid-write; one writer per object at a time
        stale.unlink(missing_ok=True)
    # Each file replaces its old self atomically, meta.json last: an object only counts as done once
    # everything is there, and an interrupted run never leaves a half-written file.
    if depths is not None:
        with atomic_path(folder / DEPTH_FILE) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, depth=depths.astype(np.float16))
    with atomic_path(folder / "views.png") as tmp:
        Image.fromarray(np.concatenate(list(views), axis=0)).save(tmp, format="PNG", compress_level=1)
    meta = {"object": obj.to_json(), "views": len(views), "size": settings.size, "cameras": cameras}
    write_text_atomically(folder / "meta.json", json.dumps(meta, indent=1))


def render_object(obj: MeshObject, settings: RenderSettings) -> tuple[np.ndarray, list[dict], np.ndarray | None]:
    """(views, size, size, 3) uint8 renders of one object, their cameras, and with ``settings.depth``
    (views, size, size) float32 metric z-depth (0: background), else None."""
    import pybullet as p

    _connect(settings.renderer)
    p.resetSimulation()
    with tempfile.TemporaryDirectory(prefix="ddclip-render-") as tmp:
        parsed: dict[str, np.ndarray] = {}
        body = _load(obj, Path(tmp), parsed)
        low, high = body_bounds(body, parsed)
    centre = (low + high) / 2
    radius = max(float(np.linalg.norm(high - low)) / 2, 1e-6)
    # Same seed and uid give the same cameras: re-rendering an object reproduces it.
    rng = np.random.default_rng([settings.seed, *obj.uid.encode()])
    half_fov = math.radians(settings.fov) / 2
    near, far = radius * 0.05, radius * 50
    projection = p.computeProjectionMatrixFOV(fov=settings.fov, aspect=1.0, nearVal=near, farVal=far)
    views, cameras, depths = [], [], []
    for _ in range(settings.views):
        direction = _random_direction(rng)
        # Relative to the distance where the bounding sphere just fits, so any size fills the frame alike.
        distance = radius / math.sin(half_fov) * rng.uniform(*settings.distance)
        eye = centre + distance * direction
        view = p.computeViewMatrix(eye.tolist(), centre.tolist(), [0, 0, 1])
        _, _, rgba, zbuffer, seg = p.getCameraImage(
            settings.size,
            settings.size,
            view,
            projection,
            renderer=p.ER_BULLET_HARDWARE_OPENGL if settings.renderer == "egl" else p.ER_TINY_RENDERER,
        )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(settings.size, settings.size, 4)[:, :, :3].copy()
        mask = np.asarray(seg).reshape(settings.size, settings.size) >= 0
        if not mask.any():
            raise RuntimeError("the object is not visible in a view (empty or degenerate mesh)")
        rgb[~mask] = 255  # white background, as the published renders
        views.append(rgb)
        if settings.depth:
            # OpenGL depth buffer in [0, 1] -> eye-space z (the perspective projection inverted).
            z = np.asarray(zbuffer, dtype=np.float64).reshape(settings.size, settings.size)
            depths.append(np.where(mask, far * near / (far - (far - near) * z), 0.0).astype(np.float32))
        cameras.append(
            {
                "world_to_camera": np.asarray(view, dtype=np.float64).reshape(4, 4).T.tolist(),  # column-major
                "eye": eye.tolist(),
                "target": centre.tolist(),
                "fov_y_degrees": settings.fov,
            }
        )
    return np.stack(views), cameras, (np.stack(depths) if settings.depth else None)


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    azimuth = rng.uniform(0, 2 * math.pi)
    # Uniform on the sphere: sin(elevation) uniform; clipped near the poles.
    elevation = math.asin(rng.uniform(-1, 1))
    elevation = max(-MAX_ELEVATION, min(MAX_ELEVATION, elevation))
    return np.array(
        [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
    )


def _load(obj: MeshObject, tmp: Path, parsed: dict[str, np.ndarray] | None = None) -> int:
    """Load ``obj`` into pybullet; ``parsed`` receives the (2, 3) bounds of each mesh file trimesh read
    on the way, so ``body_bounds`` need not parse it again."""
    import pybullet as p

    if not obj.path.is_file():
        raise FileNotFoundError(f"{obj.path}: no such file")
    orientation = p.getQuaternionFromEuler(obj.euler)
    suffix = obj.path.suffix.lower()
    if suffix == ".urdf":
        body = p.loadURDF(str(obj.path), baseOrientation=orientation, useFixedBase=True, globalScaling=obj.scale)
    else:
        if suffix in (".obj", ".stl"):
            mesh, scene = obj.path, _check_geometry(obj.path)  # pybullet crashes on an OBJ without vertices
        else:
            mesh, scene = _to_obj(obj.path, tmp)
        if parsed is not None and scene.bounds is not None:
            parsed[str(mesh)] = np.asarray(scene.bounds, dtype=np.float64)
        shape = p.createVisualShape(p.GEOM_MESH, fileName=str(mesh), meshScale=[obj.scale] * 3)
        if shape < 0:
            raise RuntimeError(f"{obj.path}: pybullet could not load the mesh")
        body = p.createMultiBody(baseMass=0, baseVisualShapeIndex=shape, baseOrientation=orientation)
    if obj.texture is not None:
        texture = p.loadTexture(str(obj.texture))
        if texture < 0:
            raise RuntimeError(f"{obj.texture}: pybullet could not load the texture")
        p.changeVisualShape(body, -1, textureUniqueId=texture, rgbaColor=[1, 1, 1, 1])
    return body


def _load_scene(path: Path) -> Any:
    import trimesh

    try:
        return trimesh.load(path, force="scene")
    except Exception as exc:  # trimesh raises what its parsers raise
        raise ValueError(f"{path}: not a readable mesh: {exc}") from exc


def _check_geometry(path: Path) -> Any:
    scene = _load_scene(path)
    if not any(len(getattr(g, "faces", ())) for g in scene.geometry.values()):
        raise ValueError(f"{path}: no faces in the file")
    return scene


def _to_obj(path: Path, tmp: Path) -> tuple[Path, Any]:
    # pybullet reads OBJ/STL only; trimesh converts GLB/GLTF/PLY keeping UVs and textures.
    scene = _load_scene(path)
    if not scene.geometry:
        raise ValueError(f"{path}: no geometry in the file")
    out = tmp / "mesh.obj"
    scene.export(out, file_type="obj", include_texture=True)  # the scene graph's transforms baked in
    return out, scene


def body_bounds(body: int, parsed: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounds of everything visible of a body, in world coordinates.

    pybullet's getAABB covers collision shapes only (zeros for visual-only bodies, just the base for
    multi-link ones), so the visual shapes are measured too: meshes from their vertices (``parsed``:
    bounds already known by file name, as ``_load`` fills it).
    """
    import pybullet as p

    points = []
    links = range(-1, p.getNumJoints(body))
    for link in links:
        low, high = p.getAABB(body, link)
        if np.any(np.asarray(high) - np.asarray(low) > 1e-9):
            points += [low, high]
    for shape in p.getVisualShapeData(body):
        link, geom, dims, filename, local_pos, local_orn = shape[1], shape[2], shape[3], shape[4], shape[5], shape[6]
        name = filename.decode() if isinstance(filename, bytes) else filename
        corners = _shape_corners(geom, dims, name, (parsed or {}).get(name))
        if corners is None:
            continue
        pos, orn = p.multiplyTransforms(*link_pose(body, link), local_pos, local_orn)
        rotation = np.asarray(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
        points += list(corners @ rotation.T + np.asarray(pos))
    if not points:
        raise RuntimeError("the object has no visible geometry")
    points = np.asarray(points, dtype=np.float64)
    return points.min(axis=0), points.max(axis=0)


def link_pose(body: int, link: int) -> tuple:
    """World (position, orientation) of a link's URDF frame, the frame its visual shapes hang off."""
    import pybullet as p

    if link == -1:  # the base pose is its inertial frame
        com_pos, com_orn = p.getBasePositionAndOrientation(body)
        inertial_pos, inertial_orn = p.getDynamicsInfo(body, -1)[3:5]
        return p.multiplyTransforms(com_pos, com_orn, *p.invertTransform(inertial_pos, inertial_orn))
    return p.getLinkState(body, link)[4:6]


def _shape_corners(
    geom: int, dims: Sequence[float], filename: str, bounds: np.ndarray | None = None
) -> np.ndarray | None:
    import pybullet as p

    if geom == p.GEOM_MESH and bounds is not None:
        low, high = bounds * np.asarray(dims[:3])
    elif geom == p.GEOM_MESH and filename and Path(filename).is_file():
        import trimesh

        mesh = trimesh.load(filename, force="mesh")
        low, high = mesh.bounds * np.asarray(dims[:3])
    elif geom == p.GEOM_BOX:
        low, high = -np.asarray(dims[:3]) / 2, np.asarray(dims[:3]) / 2
    elif geom == p.GEOM_SPHERE:
        low, high = -np.full(3, dims[0]), np.full(3, dims[0])
    elif geom in (p.GEOM_CYLINDER, p.GEOM_CAPSULE):
        length, radius = dims[0], dims[1]
        low, high = -np.array([radius, radius, length / 2]), np.array([radius, radius, length / 2])
    else:
        return None
    return np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
