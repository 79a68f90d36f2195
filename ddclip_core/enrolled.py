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
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_atomically
from .bank import EmbeddingBank, as_queries
from .identity import WeightsIdentity, identity_of

PREFIX = "enrolled:"
FILE = "enrolled.npz"


class EnrolledObjects:
    """identity: the embedding space of the enrolled embeddings (the model's, with any fusion); a file made
    in another is refused. Bank rows are added as made by ``bank_weights`` (the model, whose aliases count)."""

    def __init__(
        self,
        dim: int,
        identity: WeightsIdentity | str | None = None,
        folder: str | os.PathLike | None = None,
        *,
        bank_weights: Any = None,
    ) -> None:
        self.dim, self.identity = dim, identity_of(identity)
        self.bank_weights = bank_weights if bank_weights is not None else self.identity
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
            bank = EmbeddingBank(self.dim, weights_id=self._bank_weights_id())
        ids = list(self._records)
        bank.remove([item_id for item_id in ids if item_id in bank])
        # one add, so one segment of the bank, however many names (each segment costs every search)
        vectors = np.stack([self._vectors[item_id] for item_id in ids])
        bank.add(vectors, [self._records[item_id] for item_id in ids], weights_id=self.bank_weights)
        return bank

    def add(self, bank: EmbeddingBank | None, embedding: Any, name: str, category: str = "") -> EmbeddingBank:
        """Enroll (or re-enroll: the new views replace the old) ``name``; returns the bank now holding it."""
        item_id = PREFIX + name
        self._records[item_id] = {"id": item_id, "name": name, "category": category, "source": "enrolled"}
        self._vectors[item_id] = as_queries(embedding, self.dim)[0]
        if bank is None:
            bank = EmbeddingBank(self.dim, weights_id=self._bank_weights_id())
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
        bank.add(self._vectors[item_id][None], [self._records[item_id]], weights_id=self.bank_weights)

    def _bank_weights_id(self) -> str | None:
        identity = identity_of(self.bank_weights)
        return None if identity is None else identity.id

    def save(self) -> None:
        """Written at every change, not only at shutdown: a name someone gave must survive a crash."""
        if self.folder is None:
            return
        ids = list(self._records)
        matrix = np.stack([self._vectors[i] for i in ids]) if ids else np.zeros((0, self.dim), np.float32)
        meta = {
            "dim": self.dim,
            "weights_id": None if self.identity is None else self.identity.id,
            "objects": [self._records[i] for i in ids],
        }
        write_atomically(
            self.folder / FILE,
            lambda f: np.savez(f, embeddings=matrix.astype(np.float32), meta=np.array(json.dumps(meta))),
        )

    def _load(self) -> None:
        assert self.folder is not None
        path = self.folder / FILE
        try:
            with np.load(path, allow_pickle=False) as data:
                matrix, meta = np.asarray(data["embeddings"], np.float32), json.loads(str(data["meta"]))
            records = meta["objects"]
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a readable enrolled-names file ({type(exc).__name__}: {exc})") from exc
        if not isinstance(meta, dict) or not isinstance(records, list):
            raise ValueError(f"{path}: not a readable enrolled-names file (no list of objects)")
        if self.identity is not None:
            self.identity.check_recorded(
                meta.get("weights_id"),
                len(records),
                f"{path}: the enrolled-names file",
                "enrolled objects",
                "Enroll them again, or use another memory_path.",
            )
            self.identity.check(
                meta.get("weights_id"),
                f"{path}: the enrolled objects were",
                "Enroll them again with these weights, or use another memory_path.",
            )
        if matrix.shape != (len(records), self.dim):
            raise ValueError(f"{path}: embeddings are {matrix.shape}, expected {(len(records), self.dim)}")
        for record, vector in zip(records, matrix, strict=True):
            if not isinstance(record, dict) or not str(record.get("id", "")).startswith(PREFIX):
                raise ValueError(f"{path}: corrupt record {record!r}")
            self._records[record["id"]] = record
            self._vectors[record["id"]] = vector
