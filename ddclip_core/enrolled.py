"""EnrolledObjects: objects a user named ("Ana's mug"), kept so they are recognised after a restart.

They are searched as rows ``enrolled:<name>`` of an EmbeddingBank (the node's bank, or a bank of
their own when none was given), and persisted apart from it, so that a large read-only bank such as
Objaverse is never rewritten: one ``enrolled.npz`` in the node's memory folder, replaced atomically,
holding the embeddings and a JSON string of the records and the weights that made them (plain
arrays: read without pickle).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .bank import EmbeddingBank, as_queries

PREFIX = "enrolled:"
FILE = "enrolled.npz"


class EnrolledObjects:
    def __init__(self, dim: int, weights_id: str | None = None, folder: str | os.PathLike | None = None) -> None:
        self.dim, self.weights_id = dim, weights_id
        self.folder = Path(folder) if folder else None
        self._records: dict[str, dict[str, Any]] = {}  # id -> record (id, name, category, source)
        self._vectors: dict[str, np.ndarray] = {}
        if self.folder is not None and (self.folder / FILE).is_file():
            self._load()

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._records

    def into(self, bank: EmbeddingBank | None) -> EmbeddingBank | None:
        """Add every enrolled object to ``bank`` (made when None and there is something to add)."""
        if not self._records:
            return bank
        if bank is None:
            bank = EmbeddingBank(self.dim, weights_id=self.weights_id)
        for item_id in self._records:
            self._replace_in(bank, item_id)
        return bank

    def add(self, bank: EmbeddingBank | None, embedding: Any, name: str, category: str = "") -> EmbeddingBank:
        """Enroll (or re-enroll: the new views replace the old) ``name``; returns the bank now holding it."""
        item_id = PREFIX + name
        self._records[item_id] = {"id": item_id, "name": name, "category": category, "source": "enrolled"}
        self._vectors[item_id] = as_queries(embedding, self.dim)[0]
        if bank is None:
            bank = EmbeddingBank(self.dim, weights_id=self.weights_id)
        self._replace_in(bank, item_id)
        self.save()
        return bank

    def remove(self, bank: EmbeddingBank | None, ids: list[str]) -> int:
        """Forget enrolled ids (others are ignored); returns how many."""
        known = [i for i in ids if i in self._records]
        for item_id in known:
            del self._records[item_id], self._vectors[item_id]
        if bank is not None:
            bank.remove([i for i in known if i in bank])
        if known:
            self.save()
        return len(known)

    def _replace_in(self, bank: EmbeddingBank, item_id: str) -> None:
        if item_id in bank:
            bank.remove([item_id])
        bank.add(self._vectors[item_id][None], [self._records[item_id]], weights_id=self.weights_id)

    def save(self) -> None:
        """Written at every change, not only at shutdown: a name someone gave must survive a crash."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        ids = list(self._records)
        matrix = np.stack([self._vectors[i] for i in ids]) if ids else np.zeros((0, self.dim), np.float32)
        meta = {"dim": self.dim, "weights_id": self.weights_id, "objects": [self._records[i] for i in ids]}
        tmp = self.folder / (FILE + ".tmp")
        with open(tmp, "wb") as file:
            np.savez(file, embeddings=matrix.astype(np.float32), meta=np.array(json.dumps(meta)))
        tmp.replace(self.folder / FILE)

    def _load(self) -> None:
        assert self.folder is not None
        with np.load(self.folder / FILE, allow_pickle=False) as data:
            matrix, meta = data["embeddings"], json.loads(str(data["meta"]))
        if self.weights_id and meta.get("weights_id") and meta["weights_id"] != self.weights_id:
            raise ValueError(
                f"{self.folder}: enrolled objects were made with weights {meta['weights_id']!r}, "
                f"not {self.weights_id!r}: enroll them again with these weights, or use another memory_path"
            )
        if matrix.shape != (len(meta["objects"]), self.dim):
            expected = (len(meta["objects"]), self.dim)
            raise ValueError(f"{self.folder / FILE}: embeddings are {matrix.shape}, expected {expected}")
        for record, vector in zip(meta["objects"], matrix, strict=True):
            self._records[record["id"]] = record
            self._vectors[record["id"]] = vector
