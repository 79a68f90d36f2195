"""ObjectMemory: the latest embedding of every object the robot encoded, queryable by language.

Bounded (least recently seen objects go first), optionally persisted to a folder as
``memory.npz`` (embeddings, plain arrays, no pickle) + ``memory.json`` (ids, names, times, poses).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bank import as_queries


@dataclass
class SeenObject:
    track_id: str
    last_seen: float  # seconds (the stamp of the newest view)
    num_views: int
    frame_id: str = ""
    pose: list[float] = field(default_factory=list)  # x y z qx qy qz qw in frame_id, empty if unknown
    name: str = ""  # a name given by enrolment, if any


class ObjectMemory:
    def __init__(self, dim: int, max_objects: int = 1000, weights_id: str | None = None) -> None:
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        self.dim, self.max_objects, self.weights_id = dim, max_objects, weights_id
        self._objects: OrderedDict[str, SeenObject] = OrderedDict()
        self._embeddings: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, track_id: str) -> bool:
        return track_id in self._objects

    def get(self, track_id: str) -> SeenObject | None:
        return self._objects.get(track_id)

    def update(self, info: SeenObject, embedding: Any) -> None:
        """Store the newest embedding of a track (replacing the older one)."""
        vector = as_queries(embedding, self.dim)[0]
        old = self._objects.pop(info.track_id, None)
        if old is not None and old.name and not info.name:
            info.name = old.name
        self._objects[info.track_id] = info
        self._embeddings[info.track_id] = vector
        while len(self._objects) > self.max_objects:
            dropped, _ = self._objects.popitem(last=False)
            del self._embeddings[dropped]

    def name(self, track_id: str, name: str) -> None:
        self._objects[track_id].name = name

    def forget(self, track_ids: list[str] | None = None) -> int:
        ids = list(self._objects) if track_ids is None else [t for t in track_ids if t in self._objects]
        for track_id in ids:
            del self._objects[track_id]
            del self._embeddings[track_id]
        return len(ids)

    def search(self, query: Any, k: int = 10) -> list[tuple[SeenObject, float]]:
        """Seen objects ranked by cosine similarity to ``query`` (an embedding), best first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not self._objects:
            return []
        q = as_queries(query, self.dim)[0]
        ids = list(self._objects)
        scores = np.stack([self._embeddings[i] for i in ids]) @ q
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self._objects[ids[i]], float(scores[i])) for i in order]

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        ids = list(self._objects)
        matrix = np.stack([self._embeddings[i] for i in ids]) if ids else np.zeros((0, self.dim), np.float32)
        np.savez(folder / "memory.npz", embeddings=matrix)
        meta = {"dim": self.dim, "weights_id": self.weights_id, "objects": [asdict(self._objects[i]) for i in ids]}
        tmp = folder / "memory.json.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(folder / "memory.json")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, max_objects: int = 1000, weights_id: str | None = None) -> ObjectMemory:
        folder = Path(folder)
        meta = json.loads((folder / "memory.json").read_text())
        if weights_id and meta.get("weights_id") and meta["weights_id"] != weights_id:
            raise ValueError(
                f"{folder}: object memory was made with weights {meta['weights_id']!r}, not {weights_id!r}"
            )
        with np.load(folder / "memory.npz", allow_pickle=False) as data:
            matrix = data["embeddings"]
        if len(matrix) != len(meta["objects"]):
            raise ValueError(f"{folder}: {len(matrix)} embeddings for {len(meta['objects'])} objects")
        memory = cls(int(meta["dim"]), max_objects, weights_id or meta.get("weights_id"))
        for record, vector in zip(meta["objects"], matrix, strict=True):
            memory.update(SeenObject(**record), vector)
        return memory
