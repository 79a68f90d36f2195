"""``ddclip data gaussians --ray``: the RGB-D lifting as Ray tasks over shards of rows.

Each task lifts a contiguous range of the data folder's objects from their renders exactly as
``write_gaussians`` does (``object_features``) and writes ``shards/gaussians-<token>-<i>.h5``; the
driver presents them as ``gaussians.h5`` (virtual datasets, the same attributes), read unchanged by
GS-CLIP training and evaluation. An object that cannot be lifted is fatal, as in ``write_gaussians``.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ddclip_core.cluster import run_tasks, shards
from ddclip_core.gaussians.splats import NUM_FEATURES

from .gaussian_data import GAUSSIANS, FuseSettings, object_features
from .layout import DataError, DataFolder
from .shards import delete, discard, new_token, shard_path, write_shard, write_virtual

SHARD_OBJECTS = 256
DATASETS = ("features", "counts", "centre", "radius")


def gaussians_shard(uids: list[str], start: int, renders: Path, settings: FuseSettings, path: Path) -> Path:
    """Lift the objects ``uids`` (rows start..) into the shard file ``path`` (a Ray task)."""
    p = settings.max_points

    def write(f: h5py.File) -> None:
        n = len(uids)
        feats = f.create_dataset("features", (n, p, NUM_FEATURES), np.float16, chunks=(1, p, NUM_FEATURES))
        counts, centres = f.create_dataset("counts", (n,), np.int32), f.create_dataset("centre", (n, 3), np.float32)
        radii = f.create_dataset("radius", (n,), np.float32)
        for i, uid in enumerate(uids):
            try:
                features, centre, radius = object_features(renders / uid, settings)
            except DataError as exc:
                raise DataError(f"object {uid!r} (row {start + i}): {exc}") from exc
            padded = np.zeros((p, NUM_FEATURES), np.float16)
            padded[: len(features)] = features
            feats[i], counts[i], centres[i], radii[i] = padded, len(features), centre, radius

    return write_shard(path, write)


def write_gaussians_ray(
    data: DataFolder,
    renders: Path,
    settings: FuseSettings | None = None,
    *,
    shard_objects: int = SHARD_OBJECTS,
    progress: bool = True,
) -> Path:
    """``write_gaussians`` on the Ray cluster joined; returns the path of ``gaussians.h5``."""
    settings = settings or FuseSettings()
    if settings.max_points < 4:
        raise ValueError(f"max_points must be >= 4, got {settings.max_points}")
    missing = [uid for uid in data.uids if not (renders / uid / "meta.json").is_file()]
    if missing:
        raise DataError(f"{renders}: no render for {len(missing)} objects of {data.root} (e.g. {missing[0]!r})")
    token = new_token()
    ranges = shards(data.num_objects, shard_objects)
    calls = [
        (data.uids[start:stop], start, renders, settings, shard_path(data.root, "gaussians", token, i))
        for i, (start, stop) in enumerate(ranges)
    ]
    parts: list[Path] = [Path()] * len(calls)
    weights = [stop - start for start, stop in ranges]
    for index, result in run_tasks(gaussians_shard, calls, weights=weights, desc="gaussians (ray)", progress=progress):
        if isinstance(result, Exception):
            discard(data.root, "gaussians", token)
            raise result
        parts[index] = result
    attrs = {"max_points": settings.max_points, "voxel_fraction": settings.voxel_fraction, "seed": settings.seed}
    attrs["source"] = "rgbd"  # as write_gaussians records it
    delete(write_virtual(data.path(GAUSSIANS), parts, DATASETS, extra=lambda f: f.attrs.update(attrs)))
    return data.path(GAUSSIANS)
