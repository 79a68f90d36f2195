"""h5 files written in parallel as shards, presented as one file through HDF5 virtual datasets.

A cluster run writes ``<data>/shards/<kind>-<token>-<index>.h5`` (rows start..stop of each dataset,
the token new each run), then one small file under the usual name (``mv_images.h5``, ...) whose
datasets are virtual: each maps its rows to the shards (paths relative to the file, so the folder
can move). Readers (h5py, training, evaluation) see ordinary datasets; nothing is copied. The
virtual file replaces the old one atomically, then the shards the old one used are deleted.

A virtual dataset reads a missing shard as fill values without an error, so readers of the data
folder check ``missing_sources`` first.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py

from ddclip_core.atomic import atomic_path

SHARDS = "shards"


def new_token() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def shard_path(root: Path, kind: str, token: str, index: int) -> Path:
    return root / SHARDS / f"{kind}-{token}-{index:06d}.h5"


def write_shard(path: Path, write: Callable[[h5py.File], None]) -> Path:
    """Write one shard under a temporary name, then rename: a killed worker never leaves half a shard."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        write(f)
    return path


def _sources(path: Path) -> set[Path]:
    if not path.is_file() or not h5py.is_hdf5(path):
        return set()
    found = set()
    with h5py.File(path, "r") as f:
        for dataset in f.values():
            if isinstance(dataset, h5py.Dataset) and dataset.is_virtual:
                found.update((path.parent / source.file_name).resolve() for source in dataset.virtual_sources())
    return found


def missing_sources(path: Path) -> list[str]:
    """Shard files that the virtual datasets of ``path`` name but that do not exist (none: not virtual)."""
    return sorted(str(source) for source in _sources(path) if not source.is_file())


def write_virtual(
    path: Path,
    parts: Sequence[Path],
    names: Sequence[str],
    extra: Callable[[h5py.File], None] | None = None,
) -> set[Path]:
    """Write ``path`` with a virtual dataset per name: the parts' datasets concatenated along rows.

    extra: writes the file's small real datasets and attributes. Returns the shards that the previous
    ``path`` used and the new one does not: ``delete`` them once every file naming them is replaced.
    """
    if not parts:
        raise ValueError(f"{path}: no shards to present")
    previous = _sources(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", libver="latest") as out:  # a failure keeps the old file
        for name in names:
            shapes, dtype = [], None
            for part in parts:
                with h5py.File(part, "r") as f:
                    shapes.append(f[name].shape)
                    dtype = f[name].dtype
            rows = sum(shape[0] for shape in shapes)
            layout = h5py.VirtualLayout(shape=(rows, *shapes[0][1:]), dtype=dtype)
            start = 0
            for part, shape in zip(parts, shapes, strict=True):
                if shape[1:] != shapes[0][1:]:
                    raise ValueError(f"{part}: {name} has rows of shape {shape[1:]}, the first shard {shapes[0][1:]}")
                relative = os.path.relpath(part, path.parent)
                layout[start : start + shape[0]] = h5py.VirtualSource(relative, name, shape=shape)
                start += shape[0]
            out.create_virtual_dataset(name, layout)
        if extra is not None:
            extra(out)
    return previous - {Path(part).resolve() for part in parts}


def shards_of(path: Path) -> set[Path]:
    """The shard files the virtual datasets of ``path`` read (none: not virtual, or no such file)."""
    return _sources(path)


def delete(paths: set[Path] | list[Path]) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)


def discard(root: Path, kind: str, token: str) -> None:
    """Remove the shards of a run that failed before presenting them."""
    delete(list((root / SHARDS).glob(f"{kind}-{token}-*.h5")))
