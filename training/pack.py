"""Pack rendered objects into the published layout (mv_images.h5 + model_to_idx.json)."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from ddclip_core.atomic import atomic_path, write_text_atomically
from ddclip_core.text_files import naming_file, read_json

from .gaussian_data import GAUSSIANS
from .layout import (
    CAPTIONS,
    IMAGE_TARGETS,
    IMAGES,
    OBJECTS,
    SPLITS,
    TEXT_TARGETS,
    UID_MAP,
    DataError,
    ObjectInfo,
    write_objects,
)
from .shards import delete, shards_of

log = logging.getLogger(__name__)


def rendered_objects(renders: Path) -> list[Path]:
    """Folders of finished renders (both views.png and meta.json), sorted by uid."""
    if not renders.is_dir():
        raise DataError(f"{renders}: no such folder of renders")
    return sorted(p.parent for p in renders.glob("*/meta.json") if (p.parent / "views.png").is_file())


def read_captions(path: Path) -> dict[str, list[str]]:
    """Captions per uid from JSON ({uid: caption or [captions]}) or CSV (columns uid, caption)."""
    if path.suffix.lower() == ".json":
        data = read_json(path)
        if not isinstance(data, dict) or not all(isinstance(c, str | list) for c in data.values()):
            raise DataError(f"{path}: captions JSON must be an object of uid: caption or uid: [captions]")
        return {uid: [c] if isinstance(c, str) else [str(x) for x in c] for uid, c in data.items()}
    captions: dict[str, list[str]] = {}
    with naming_file(path), path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"uid", "caption"} <= set(reader.fieldnames):
            raise DataError(f"{path}: a captions CSV needs columns uid and caption, found {reader.fieldnames}")
        for row in reader:
            caption = (row["caption"] or "").strip()
            if caption:
                captions.setdefault(row["uid"], []).append(caption)
    return captions


def assign_splits(uids: list[str], val_fraction: float, seed: int) -> dict[str, str]:
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(uids))
    num_val = round(len(uids) * val_fraction)
    return {uids[i]: ("val" if rank < num_val else "train") for rank, i in enumerate(order)}


@dataclass
class PackPlan:
    """What a pack writes: the rendered folders in row order, their uids, metas and splits."""

    folders: list[Path]
    uids: list[str]
    metas: list[dict]
    num_views: int
    splits: dict[str, str]


def plan_pack(
    renders: Path, splits: dict[str, str] | None = None, val_fraction: float = 0.0, seed: int = 0
) -> PackPlan:
    """Rows (sorted by uid), views and splits of a pack of ``renders``; checked before anything is written."""
    folders = rendered_objects(renders)
    if not folders:
        raise DataError(f"{renders}: no rendered objects (run `ddclip data render` first)")
    metas = [json.loads((folder / "meta.json").read_text()) for folder in folders]
    uids = [folder.name for folder in folders]
    views = {meta["views"] for meta in metas}
    if len(views) != 1:
        raise DataError(f"{renders}: objects have different numbers of views {sorted(views)}; render them alike")
    splits = splits or assign_splits(uids, val_fraction, seed)
    bad = {s for s in splits.values() if s not in SPLITS}
    if bad:
        raise ValueError(f"unknown splits {sorted(bad)}; use {SPLITS}")
    return PackPlan(folders, uids, metas, views.pop(), splits)


def create_images(f: h5py.File, rows: int, num_views: int) -> h5py.Dataset:
    return f.create_dataset(
        "imgs", shape=(rows, num_views, 3, 224, 224), dtype=np.uint8, chunks=(1, num_views, 3, 224, 224)
    )


def read_views(folder: Path, num_views: int) -> np.ndarray:
    """(views, 3, 224, 224) uint8 of one rendered object, from its strip."""
    strip = np.asarray(Image.open(folder / "views.png").convert("RGB"))
    if strip.shape != (224 * num_views, 224, 3):
        raise DataError(f"{folder}/views.png: shape {strip.shape}, expected {(224 * num_views, 224, 3)}")
    return strip.reshape(num_views, 224, 224, 3).transpose(0, 3, 1, 2)


def pack(
    renders: Path,
    out: Path,
    *,
    splits: dict[str, str] | None = None,
    captions: dict[str, list[str]] | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> int:
    """Write ``out/mv_images.h5``, ``model_to_idx.json``, ``objects.csv`` (+ ``captions.json``).

    splits: uid -> train/val/test (default: a seeded random ``val_fraction`` of objects is val).
    Returns the number of objects packed.
    """
    plan = plan_pack(renders, splits, val_fraction, seed)
    old_shards = shards_of(out / IMAGES)  # a Ray pack's: nothing reads them once the new images are in
    with atomic_path(out / IMAGES) as tmp, h5py.File(tmp, "w") as f:  # a failed view leaves no partial file
        imgs = create_images(f, len(plan.folders), plan.num_views)
        for row, folder in enumerate(tqdm(plan.folders, desc="pack", unit="obj", disable=not progress)):
            imgs[row] = read_views(folder, plan.num_views)
        retire_derived(out)
    delete(old_shards)
    write_index(out, plan, captions)
    return len(plan.uids)


def retire_derived(out: Path) -> None:
    """Before new images land: the old index and targets describe the old images. Gone first, a run cut
    short leaves a folder that is refused (no uid map), never one that labels the new images with the
    old uids; and `data targets` must run again (old targets would pass their shape checks)."""
    for name in (UID_MAP, OBJECTS, CAPTIONS, IMAGE_TARGETS, TEXT_TARGETS, GAUSSIANS):
        used = shards_of(out / name)  # a Ray run's targets or Gaussians: their shards go with them
        (out / name).unlink(missing_ok=True)
        delete(used)


def write_index(out: Path, plan: PackPlan, captions: dict[str, list[str]] | None) -> None:
    """model_to_idx.json, objects.csv and captions.json of a pack (everything beside the images)."""
    uids = plan.uids
    write_text_atomically(out / UID_MAP, json.dumps({uid: row for row, uid in enumerate(uids)}, indent=0))
    objects = []
    for uid, meta in zip(uids, plan.metas, strict=True):
        source = meta.get("object", {})
        name = source.get("name", "")
        objects.append(ObjectInfo(uid, name, source.get("category") or name, plan.splits.get(uid, "train")))
    write_objects(out, objects)
    if captions:
        missing = [uid for uid in uids if not captions.get(uid)]
        if missing:
            log.warning("%d objects have no caption (e.g. %s); targets use their category", len(missing), missing[0])
        text = json.dumps({uid: captions[uid] for uid in uids if captions.get(uid)}, indent=1)
        write_text_atomically(out / CAPTIONS, text)
