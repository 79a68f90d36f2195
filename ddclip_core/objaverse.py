"""The published Objaverse embeddings as released, and names for their uids.

``shape_emb_objaverse.h5`` holds dataset ``shape_feat`` (N, 512); ``shape_emb_objaverse_model_to_idx.json``
maps Objaverse uid -> row; the release names no object. Names come from:
- categories: the Objaverse-LVIS annotations (``lvis-annotations.json.gz``, category -> uids, ~46 k
  objects in 1,156 categories), or any csv/parquet with a ``uid`` column (the LVIS csv ``class_idx,name,uid``);
- captions: Cap3D's ``Cap3D_automated_Objaverse_full.csv`` (no header; uid, caption; ~785 k Objaverse 1.0
  objects). It is the widest public per-uid text that is not a pickle (OpenShape's texts are pickled
  numpy dicts, which this project never unpickles).
A matched object is then named by its caption, else its category, else its uid.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .text_files import naming_file, read_json

PUBLISHED_WEIGHTS_ID = "published:Four_1to6F_bs1600_LT6"


def read_shape_embeddings(h5_path: str | Path, uid_map_path: str | Path) -> tuple[np.ndarray, list[str]]:
    """(N, D) float32 embeddings and the uid of each row, validated against each other."""
    h5_path, uid_map_path = Path(h5_path), Path(uid_map_path)
    for path in (h5_path, uid_map_path):
        if not path.is_file():
            raise FileNotFoundError(f"file not found: {path}")
    try:
        with h5py.File(h5_path, "r") as handle:
            if "shape_feat" not in handle:
                raise ValueError(f"{h5_path}: no dataset 'shape_feat' (found: {', '.join(handle.keys()) or 'none'})")
            dataset = handle["shape_feat"]
            if not isinstance(dataset, h5py.Dataset):
                raise ValueError(f"{h5_path}: 'shape_feat' is a group, not a dataset of embeddings")
            if dataset.ndim != 2:
                raise ValueError(f"{h5_path}: 'shape_feat' must be (N, D), got shape {dataset.shape}")
            if not np.issubdtype(dataset.dtype, np.floating):
                raise ValueError(f"{h5_path}: 'shape_feat' must hold floating-point embeddings, got {dataset.dtype}")
            vectors = dataset[()].astype(np.float32, copy=False)
    except OSError as exc:
        raise ValueError(f"{h5_path}: not a readable HDF5 file: {exc}") from exc
    uids = read_uid_map(uid_map_path, len(vectors))
    if not np.isfinite(vectors).all():
        raise ValueError(f"{h5_path}: 'shape_feat' contains NaN or infinity")
    return vectors, uids


def read_uid_map(path: str | Path, num_rows: int) -> list[str]:
    """The uid of each of ``num_rows`` rows, from a JSON object uid -> row (the published ``*model_to_idx.json``).

    Every row must be claimed by exactly one non-empty uid: a gap or a row claimed twice would silently
    name the wrong object, so both are refused.
    """
    uid_to_row = read_json(path)
    if not isinstance(uid_to_row, dict):
        raise ValueError(f"{path}: expected a JSON object uid -> row")
    uids: list[str | None] = [None] * num_rows
    for uid, row in uid_to_row.items():
        if not uid.strip():
            raise ValueError(f"{path}: an empty uid maps to row {row!r}")
        if not isinstance(row, int) or isinstance(row, bool) or not 0 <= row < num_rows:
            raise ValueError(f"{path}: uid {uid!r} maps to row {row!r}, outside 0..{num_rows - 1}")
        if uids[row] is not None:
            raise ValueError(f"{path}: row {row} is claimed by {uids[row]!r} and {uid!r}")
        uids[row] = uid
    missing = [row for row, uid in enumerate(uids) if uid is None]
    if missing:
        raise ValueError(f"{path}: {len(missing)} of {num_rows} rows have no uid (first: {missing[:5]})")
    return uids  # type: ignore[return-value]


def read_names(path: str | Path, key: str = "uid") -> dict[str, dict[str, Any]]:
    """uid -> the other columns of a csv or parquet table keyed by ``key``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"names table not found: {path}")
    if path.suffix.lower() == ".parquet":
        try:
            rows = pq.read_table(path).to_pylist()
        except pa.ArrowException as exc:
            raise ValueError(f"{path}: not a readable parquet table ({exc})") from None
    else:
        with naming_file(path), path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path}: empty names table")
    if key not in rows[0]:
        raise ValueError(f"{path}: no {key!r} column (columns: {', '.join(rows[0])})")
    return {str(row[key]): {k: v for k, v in row.items() if k != key and v not in (None, "")} for row in rows}


OBJAVERSE_UID = re.compile(r"^[0-9a-f]{32}$")
MAX_NAME = 120  # characters of a caption used as the name (the caption field keeps all of it)


def read_lvis_categories(path: str | Path) -> dict[str, dict[str, Any]]:
    """uid -> {"category": ...} from ``lvis-annotations.json(.gz)`` (category -> uids) or a csv/parquet."""
    path = Path(path)
    if not path.name.lower().endswith((".json", ".json.gz")):
        return read_names(path)
    if not path.is_file():
        raise FileNotFoundError(f"LVIS annotations not found: {path}")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as handle:
            data = json.load(handle)
    except (OSError, EOFError, zlib.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not readable LVIS annotations ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(f"{path}: expected a JSON object category -> list of uids")
    return {str(uid): {"category": category} for category, uids in data.items() for uid in uids}


def read_cap3d_captions(path: str | Path) -> dict[str, str]:
    """uid -> caption from Cap3D's csv (no header: uid, caption); Objaverse-XL hashes (64 chars) are left out."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file not found: {path}")
    captions: dict[str, str] = {}
    with naming_file(path), path.open(newline="", encoding="utf-8-sig") as handle:
        for row in csv.reader(handle):
            if len(row) >= 2 and OBJAVERSE_UID.match(row[0]) and row[1].strip():
                captions[row[0]] = row[1].strip()
    if not captions:
        raise ValueError(f"{path}: no 'uid,caption' rows with Objaverse uids (32 hex characters)")
    return captions


def objaverse_metadata(
    uids: list[str], names: dict[str, dict[str, Any]] | None, captions: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Metadata records for the bank: id, source and, where known, category, caption and a name.

    A table with ``name`` but no ``category`` (the LVIS csv) names categories: both are set. The name
    is the caption (shortened), else the table's name or category.
    """
    records = []
    for uid in uids:
        record: dict[str, Any] = {"id": uid, "source": "objaverse"}
        extra = names.get(uid) if names else None
        if extra:
            record.update(extra)
            if "name" in extra and "category" not in extra:
                record["category"] = extra["name"]
            record.setdefault("name", record.get("category"))
        caption = captions.get(uid) if captions else None
        if caption:
            record["caption"] = caption
            record["name"] = caption if len(caption) <= MAX_NAME else caption[: MAX_NAME - 1].rstrip() + "…"
        records.append(record)
    return records
