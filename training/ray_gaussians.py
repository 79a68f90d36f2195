"""``ddclip data gaussians --ray``: the RGB-D lifting as Ray tasks over shards of rows.

Each task runs ``write_gaussians`` itself on a contiguous range of the data folder's objects, with
the shard file ``shards/gaussians-<token>-<i>.h5`` as its output, so the lifting and the file layout
are exactly the one-machine path's; the driver presents the shards as ``gaussians.h5`` (virtual
datasets, the shards' attributes), read unchanged by GS-CLIP training and evaluation. An object that
cannot be lifted is fatal, as in ``write_gaussians``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py

from ddclip_core.cluster import run_tasks, shards

from .gaussian_data import GAUSSIANS, FuseSettings, write_gaussians
from .layout import DataFolder
from .shards import delete, discard, new_token, shard_path, write_virtual

SHARD_OBJECTS = 256


@dataclass
class ShardRows:
    """What ``write_gaussians`` reads of a data folder, for rows of one shard written to ``out``."""

    uids: list[str]
    root: Path
    out: Path
    first_row: int = 0  # the shard's first row in the data folder (what errors name)

    @property
    def num_objects(self) -> int:
        return len(self.uids)

    def path(self, name: str) -> Path:
        return self.out


def gaussians_shard(rows: ShardRows, renders: Path, settings: FuseSettings) -> Path:
    """Lift one shard of rows into its shard file (a Ray task)."""
    rows.out.parent.mkdir(parents=True, exist_ok=True)
    return write_gaussians(rows, renders, settings, progress=False, first_row=rows.first_row)  # type: ignore[arg-type]


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
    renders = Path(renders).resolve()  # workers do not share the driver's working directory
    token = new_token()
    ranges = shards(data.num_objects, shard_objects)
    rows = [
        ShardRows(data.uids[start:stop], data.root, shard_path(data.root, "gaussians", token, i), start)
        for i, (start, stop) in enumerate(ranges)
    ]
    calls = [(shard, renders, settings) for shard in rows]
    parts: list[Path] = [Path()] * len(calls)
    weights = [stop - start for start, stop in ranges]
    for index, result in run_tasks(gaussians_shard, calls, weights=weights, desc="gaussians (ray)", progress=progress):
        if isinstance(result, Exception):
            discard(data.root, "gaussians", token)
            raise result
        parts[index] = result
    with h5py.File(parts[0], "r") as first:  # every dataset the lifting writes: partial clouds too
        attrs = dict(first.attrs)
        names = [name for name, item in first.items() if isinstance(item, h5py.Dataset)]
    out = data.path(GAUSSIANS)
    delete(write_virtual(out, parts, names, extra=lambda f: f.attrs.update(attrs)))
    return out
