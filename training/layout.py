"""The training data folder: the published layout plus small side files, read without pickle.

    mv_images.h5          imgs (N, 12, 3, 224, 224) uint8        (published)
    model_to_idx.json     uid -> row                              (published)
    image_embeddings.h5   img_feat (N, 12, D)                     (published name; frozen CLIP per view)
    text_embeddings.h5    text_feat (T, D), text_offsets (N + 1,) captions of row i are
                          text_feat[text_offsets[i]:text_offsets[i + 1]]
    objects.csv           uid, name, category, split              (optional; ours)
    captions.json         uid -> [caption, ...]                   (optional; ours)

A folder holding only the two published files is valid: every object is then in the train split.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ddclip_core.atomic import atomic_path
from ddclip_core.objaverse import read_uid_map
from ddclip_core.text_files import naming_file, read_json
from ddclip_core.text_space import decode_probe

from .shards import missing_sources

IMAGES = "mv_images.h5"
UID_MAP = "model_to_idx.json"
IMAGE_TARGETS = "image_embeddings.h5"
TEXT_TARGETS = "text_embeddings.h5"
OBJECTS = "objects.csv"
CAPTIONS = "captions.json"
SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """The data folder is missing a file or its files disagree."""


@dataclass
class ObjectInfo:
    uid: str
    name: str = ""
    category: str = ""
    split: str = "train"


class DataFolder:
    """Index of one data folder: rows, uids, names, categories, splits, captions."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()  # Ray workers, too, find it whatever their working directory
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such data folder")
        images = self.root / IMAGES
        if not images.is_file():
            raise DataError(f"{self.root}: no {IMAGES} (run `ddclip data pack` first)")
        try:
            with h5py.File(images, "r") as f:
                if not isinstance(f.get("imgs"), h5py.Dataset):
                    raise DataError(f"{images}: no dataset 'imgs'")
                shape = f["imgs"].shape
        except OSError as exc:
            raise DataError(f"{images}: not a readable HDF5 file ({exc})") from None
        if len(shape) != 5 or shape[2] != 3 or f"{shape[3]}x{shape[4]}" != "224x224":
            raise DataError(f"{images}: imgs has shape {shape}, expected (N, V, 3, 224, 224)")
        check_shards(images)
        self.num_objects, self.num_views = int(shape[0]), int(shape[1])
        self.uids = self._read_uids()
        self.objects = self._read_objects()
        self.captions = self._read_captions()

    def _read_uids(self) -> list[str]:
        path = self.root / UID_MAP
        if not path.is_file():
            raise DataError(f"{self.root}: no {UID_MAP}")
        try:
            return read_uid_map(path, self.num_objects)
        except ValueError as exc:
            raise DataError(str(exc)) from None

    def _read_objects(self) -> list[ObjectInfo]:
        path = self.root / OBJECTS
        if not path.is_file():
            return [ObjectInfo(uid) for uid in self.uids]
        with naming_file(path), path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if "uid" not in (reader.fieldnames or []):
                raise DataError(f"{path}: no 'uid' column (columns: {reader.fieldnames})")
            rows = {row["uid"]: row for row in reader}
        objects = []
        for uid in self.uids:
            row = rows.get(uid, {})
            split = row.get("split") or "train"
            if split not in SPLITS:
                raise DataError(f"{path}: split {split!r} of {uid!r} is not one of {SPLITS}")
            objects.append(ObjectInfo(uid, row.get("name", ""), row.get("category", ""), split))
        return objects

    def _read_captions(self) -> list[list[str]]:
        path = self.root / CAPTIONS
        data = read_json(path) if path.is_file() else {}
        if not isinstance(data, dict) or not all(
            isinstance(c, list) and all(isinstance(x, str) for x in c) for c in data.values()
        ):
            raise DataError(f"{path}: expected a JSON object uid -> [caption, ...]")
        return [list(data.get(uid, [])) for uid in self.uids]

    def rows(self, split: str) -> np.ndarray:
        return np.array([i for i, obj in enumerate(self.objects) if obj.split == split], dtype=np.int64)

    def categories(self, rows: np.ndarray | None = None) -> list[str]:
        picked = self.objects if rows is None else [self.objects[i] for i in rows]
        return sorted({obj.category for obj in picked if obj.category})

    def path(self, name: str) -> Path:
        return self.root / name


def check_shards(path: Path) -> None:
    """A file written as shards (``--ray``) reads a missing shard as zeros without an error: refuse it."""
    missing = missing_sources(path)
    if missing:
        raise DataError(f"{path}: {len(missing)} of its shard files are missing (e.g. {missing[0]}); rerun the step")


def write_objects(root: Path, objects: list[ObjectInfo]) -> None:
    with atomic_path(root / OBJECTS) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["uid", "name", "category", "split"])
        writer.writeheader()
        for obj in objects:
            writer.writerow({"uid": obj.uid, "name": obj.name, "category": obj.category, "split": obj.split})


def read_text_space(path: Path) -> np.ndarray | None:
    """The text-space probe (ddclip_core.text_space) of the CLIP that made text_embeddings.h5; None for
    targets written before it was kept."""
    with h5py.File(path, "r") as f:
        recorded = f.attrs.get("text_space")
    try:
        return None if recorded is None else decode_probe(recorded, str(path))
    except ValueError as exc:
        raise DataError(str(exc)) from exc


def read_text_targets(path: Path, num_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """(text_feat (T, D), text_offsets (N + 1,)) checked against the number of objects."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (run `ddclip data targets` first)")
    check_shards(path)
    with h5py.File(path, "r") as f:
        for key in ("text_feat", "text_offsets"):
            if key not in f:
                raise DataError(f"{path}: no dataset {key!r}")
        feats, offsets = f["text_feat"][:], f["text_offsets"][:].astype(np.int64)
    if offsets.shape != (num_objects + 1,) or offsets[0] != 0 or offsets[-1] != len(feats):
        raise DataError(f"{path}: text_offsets {offsets.shape} do not index {len(feats)} captions of {num_objects}")
    if np.any(np.diff(offsets) < 1):
        raise DataError(f"{path}: objects {np.flatnonzero(np.diff(offsets) < 1)[:5].tolist()} have no caption")
    return feats, offsets
