"""Reading the object memory files of earlier versions, once, to migrate them into the database:
``memory.npz`` holding the embeddings and a JSON record (format 2), or the embeddings alone with the
records in ``memory.json`` beside it (format 1). Plain arrays and strings: read without pickle."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .stamped import Pose, Stamp

OLD_FILE, OLD_META = "memory.npz", "memory.json"


def read_old_memory(folder: Path) -> tuple[dict[str, Any], list[tuple[dict[str, Any], np.ndarray]]]:
    """(meta, [(record, embedding)]) of an old memory folder; records use today's SeenObject fields."""
    path = folder / OLD_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            matrix = np.asarray(data["embeddings"], dtype=np.float32)
            text = str(data["meta"]) if "meta" in data else None
        if text is None:
            text = (folder / OLD_META).read_text()
        meta = json.loads(text)
        objects = meta["objects"]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable object memory ({type(exc).__name__}: {exc})") from exc
    if not isinstance(objects, list) or matrix.shape != (len(objects), int(meta.get("dim", -1))):
        raise ValueError(f"{path}: corrupt object memory: {matrix.shape} embeddings for {len(objects)} objects")
    try:
        return meta, [(_record(item), vector) for item, vector in zip(objects, matrix, strict=True)]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # AttributeError: a record not a mapping
        raise ValueError(f"{path}: corrupt object record: {exc}") from exc


def _record(data: dict[str, Any]) -> dict[str, Any]:
    if "camera_frame" in data:  # format 2
        stamp, camera = Stamp.from_list(data["last_seen"]), data.get("camera_frame", "")
        pose = None if data.get("pose") is None else Pose.from_dict(data["pose"])
    else:  # format 1: seconds, the camera frame, and a bare pose list in that frame
        stamp, camera = Stamp.from_seconds(float(data.get("last_seen", 0.0))), data.get("frame_id", "")
        values = data.get("pose") or []
        pose = Pose(camera, stamp, tuple(values[:3]), tuple(values[3:])) if len(values) == 7 and camera else None
    return {
        "track_id": str(data["track_id"]),
        "stamp": stamp,
        "num_views": int(data["num_views"]),
        "camera_frame": camera,
        "pose": pose,
        "name": data.get("name", ""),
    }


def retire_old_memory(folder: Path) -> None:
    """Keep the migrated files, renamed, so nothing reads them twice and nothing is lost."""
    for name in (OLD_FILE, OLD_META):
        if (folder / name).exists():
            (folder / name).replace(folder / f"{name}.migrated")
