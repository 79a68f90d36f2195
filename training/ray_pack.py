"""``ddclip data pack --ray``: the images packed by Ray tasks into shards, presented as ``mv_images.h5``.

Same rows (uids sorted), splits and side files as ``pack``; each task writes the images of a
contiguous range of rows into ``shards/mv_images-<token>-<i>.h5``, and ``mv_images.h5`` becomes a
virtual dataset over them (``training/shards.py``), so no image is copied twice.
"""

from __future__ import annotations

from pathlib import Path

import h5py

from .layout import IMAGES
from .pack import create_images, plan_pack, read_views, retire_derived, write_index
from .shards import delete, discard, new_token, shard_path, write_shard, write_virtual

SHARD_OBJECTS = 256  # ~450 MB of images per shard file at 12 views


def pack_shard(folders: list[Path], num_views: int, path: Path) -> Path:
    """Write the images of ``folders`` (one row each, in order) into the shard file ``path`` (a Ray task)."""

    def write(f: h5py.File) -> None:
        imgs = create_images(f, len(folders), num_views)
        for row, folder in enumerate(folders):
            imgs[row] = read_views(folder, num_views)

    return write_shard(path, write)


def pack_ray(
    renders: Path,
    out: Path,
    *,
    splits: dict[str, str] | None = None,
    captions: dict[str, list[str]] | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    shard_objects: int = SHARD_OBJECTS,
    progress: bool = True,
) -> int:
    """``pack`` on the Ray cluster joined; returns the number of objects packed."""
    renders, out = Path(renders).resolve(), Path(out).resolve()  # workers do not share the driver's directory
    # Here, not at the top: the workers import this module for pack_shard, and need no torch.
    from ddclip_core.cluster import run_tasks, shards

    plan = plan_pack(renders, splits, val_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    token = new_token()
    ranges = shards(len(plan.folders), shard_objects)
    calls = [
        (plan.folders[start:stop], plan.num_views, shard_path(out, "mv_images", token, i))
        for i, (start, stop) in enumerate(ranges)
    ]
    parts: list[Path] = [Path()] * len(calls)
    for index, result in run_tasks(
        pack_shard, calls, weights=[stop - start for start, stop in ranges], desc="pack (ray)", progress=progress
    ):
        if isinstance(result, Exception):
            discard(out, "mv_images", token)
            raise result  # a broken render is fatal here, as in `pack`
        parts[index] = result
    retire_derived(out)
    stale = write_virtual(out / IMAGES, parts, ["imgs"])
    write_index(out, plan, captions)
    delete(stale)
    return len(plan.uids)
