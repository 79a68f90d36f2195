"""EmbeddingBank: L2-normalised shape embeddings with metadata, searched with FAISS, kept on disk.

On disk a bank is a folder (see ``_bank_files`` for how it is written safely):
    bank.json                manifest: format version, dim, rows, the weights that made the embeddings,
                             index spec, and the data files of the current generation with their sizes
    vectors-<g>.npy          (N, dim) float32, memory-mapped on load (an 800 k Objaverse bank is 1.6 GB)
    metadata-<g>.parquet     one row per vector: id, name, category, source and any extra fields
    index-<g>.faiss          the approximate index, when one was built

Rows added after loading live in memory beside the mapped file; removed rows are hidden at once
and dropped when the bank is saved. A bank refuses embeddings and queries from other weights.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from . import _bank_files as files
from . import _faiss_search as fs
from ._bank_files import BASE_FIELDS, BankError
from .identity import WeightsMismatchError, compatible, identity_of

MERGED_ROWS = 65_536  # the largest segment rows added later are merged into (128 MiB at 512 dims)


class BankMismatchError(BankError, WeightsMismatchError):
    """Embeddings or queries from other weights than the bank was built with."""


@dataclass(frozen=True)
class Match:
    """One search result: the row's id, cosine score and metadata."""

    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.metadata.get("name") or self.metadata.get("category") or self.id

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.score, 6), **{k: v for k, v in self.metadata.items() if k != "id"}}


def as_queries(queries: Any, dim: int) -> np.ndarray:
    """(dim,) or (Q, dim) array/tensor -> C-contiguous float32 (Q, dim), L2-normalised, validated."""
    if hasattr(queries, "detach"):
        queries = queries.detach().to("cpu").float().numpy()
    array = np.asarray(queries, dtype=np.float32)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] == 0:
        raise BankError(f"queries must be (dim,) or (Q, dim) with Q >= 1, got shape {array.shape}")
    if array.shape[1] != dim:
        raise BankError(f"query dimension {array.shape[1]} does not match the bank's {dim}")
    if not np.isfinite(array).all():
        raise BankError("queries contain NaN or infinity")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise BankError("a query is all zeros (no direction to search)")
    return np.ascontiguousarray(array / norms)


class EmbeddingBank:
    """A searchable set of shape embeddings with one metadata record per row.

    dim: embedding size (512 for ViT-B-32). weights_id: the ``DuoduoCLIP.weights_id`` (or the
    published alias) of the model that made the embeddings; other weights are refused.
    """

    def __init__(self, dim: int = 512, *, weights_id: str | None = None) -> None:
        if dim < 1:
            raise BankError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.weights_id = weights_id
        self.index_spec: dict[str, Any] = {"kind": "flat"}
        self._segments: list[np.ndarray] = []
        self._metadata = pa.table({name: pa.array([], pa.string()) for name in BASE_FIELDS})
        self._ids: list[str] = []
        self._row_of: dict[str, int] | None = None
        self._removed = np.zeros(0, dtype=bool)
        self._removed_count = 0
        self._index: faiss.Index | None = None
        self.path: Path | None = None

    # ------------------------------------------------------------------ size and identity
    def __len__(self) -> int:
        return len(self._ids) - self._removed_count

    def __contains__(self, item_id: str) -> bool:
        row = self._rows().get(item_id)
        return row is not None and not self._removed[row]

    def __repr__(self) -> str:
        return f"EmbeddingBank({len(self)} x {self.dim}, index={self.index_spec['kind']}, weights={self.weights_id})"

    def check_weights(self, weights: Any, what: str = "embeddings") -> None:
        """Refuse ``what`` made by other weights than this bank's (either side unknown: allowed).

        weights: a weights id, a ``WeightsIdentity`` or a model; its aliases count (a published
        checkpoint matches a bank imported from the released embeddings).
        """
        if not compatible(self.weights_id, weights):
            identity = identity_of(weights)
            source = getattr(weights, "weights_source", None)
            raise BankMismatchError(
                f"{what} come from weights {identity.id!r}{f' ({source})' if source else ''} but this bank was "
                f"built with {self.weights_id!r}: embeddings of different models are not comparable. Load the "
                "weights the bank was built with, or rebuild the bank with these."
            )

    def _rows(self) -> dict[str, int]:
        if self._row_of is None:
            self._row_of = {item_id: row for row, item_id in enumerate(self._ids)}
        return self._row_of

    # ------------------------------------------------------------------ editing
    def add(
        self, embeddings: Any, metadata: Sequence[dict[str, Any]] | None = None, *, weights_id: Any = None
    ) -> list[str]:
        """Add rows; each metadata dict may carry id, name, category, source and any extra fields.

        weights_id: what made the embeddings (an id, a ``WeightsIdentity`` or a model), checked against the bank's.

        Ids default to "row-<n>"; an id already in the bank is refused (remove it first).
        Embeddings are L2-normalised here. Returns the ids added.
        """
        self.check_weights(weights_id)
        vectors = as_queries(embeddings, self.dim)
        records = [dict(m) for m in metadata] if metadata is not None else [{} for _ in range(len(vectors))]
        if len(records) != len(vectors):
            raise BankError(f"{len(vectors)} embeddings but {len(records)} metadata records")
        rows = self._rows()
        new_ids: list[str] = []
        seen: set[str] = set()
        for offset, record in enumerate(records):
            item_id = str(record.get("id") or f"row-{len(self._ids) + offset}")
            if item_id in seen or (item_id in rows and not self._removed[rows[item_id]]):
                raise BankError(f"id {item_id!r} is already in the bank")
            record["id"] = item_id
            seen.add(item_id)
            new_ids.append(item_id)
        metadata = files.append_records(self._metadata, records)  # first: a failure changes nothing
        for item_id in new_ids:  # a re-added id hides its removed predecessor
            if item_id in rows:
                rows.pop(item_id)
        first = len(self._ids)
        self._segments.append(vectors)
        self._merge_newest_segments()
        self._ids.extend(new_ids)
        rows.update({item_id: first + i for i, item_id in enumerate(new_ids)})
        self._removed = np.concatenate([self._removed, np.zeros(len(new_ids), dtype=bool)])
        self._metadata = metadata
        if self._index is not None:  # index ids are row numbers: rows are only ever appended
            self._index.add(vectors)
        return new_ids

    def _merge_newest_segments(self) -> None:
        """Searches walk every segment, and each enrolment adds one: the newest two merge while the newer
        is at least half the older (logarithmically many), rows keeping their numbers; never a mapped one."""
        segments = self._segments
        while len(segments) >= 2 and not isinstance(segments[-2], np.memmap):
            older, newer = segments[-2], segments[-1]
            if 2 * len(newer) < len(older) or len(older) + len(newer) > MERGED_ROWS:
                return
            segments[-2:] = [np.concatenate([older, newer])]

    def remove(self, ids: Iterable[str]) -> int:
        """Hide rows by id at once (dropped from disk at the next save). Unknown ids are an error."""
        ids = list(ids)
        rows = self._rows()
        unknown = [i for i in ids if i not in rows or self._removed[rows[i]]]
        if unknown:
            more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise BankError(f"unknown ids: {unknown[:5]}{more}")
        for item_id in ids:
            self._removed[rows[item_id]] = True
        self._removed_count = int(self._removed.sum())
        return len(ids)

    # ------------------------------------------------------------------ reading rows
    def vectors(self) -> np.ndarray:
        """All live rows as one (N, dim) array (a copy when rows were added or removed)."""
        if len(self._segments) == 1:
            matrix = self._segments[0]
        else:
            matrix = np.concatenate(self._segments or [np.zeros((0, self.dim), np.float32)])
        return matrix if not self._removed.any() else matrix[~self._removed]

    def embedding(self, item_id: str) -> np.ndarray:
        row = self._rows().get(item_id)
        if row is None or self._removed[row]:
            raise BankError(f"unknown id {item_id!r}")
        return np.array(self._row_vector(row))

    def metadata(self, item_id: str) -> dict[str, Any]:
        row = self._rows().get(item_id)
        if row is None or self._removed[row]:
            raise BankError(f"unknown id {item_id!r}")
        return self._row_metadata(row)

    def field_counts(self, name: str) -> dict[str, int]:
        """How many live rows have each value of a metadata field (missing values count as "-")."""
        if name not in self._metadata.column_names:
            return {}
        counts: dict[str, int] = {}
        for value, removed in zip(self._metadata.column(name).to_pylist(), self._removed, strict=True):
            if not removed:
                key = "-" if value is None else str(value)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def _row_vector(self, row: int) -> np.ndarray:
        return self._vectors_at(np.array([row]))[0]

    def _vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of the given row numbers, across segments, in the order given."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        start = 0
        for segment in self._segments:
            inside = (rows >= start) & (rows < start + len(segment))
            out[inside] = segment[rows[inside] - start]
            start += len(segment)
        return out

    def _row_metadata(self, row: int) -> dict[str, Any]:
        record = self._metadata.slice(row, 1).to_pylist()[0]
        return {k: v for k, v in record.items() if v is not None}

    # ------------------------------------------------------------------ searching
    def search(self, queries: Any, k: int = 10, *, exact: bool | None = None) -> list[list[Match]]:
        """Per query, the k best rows by cosine similarity (inner product of unit vectors).

        exact=None uses the approximate index when one was built, else exact search; True forces exact.
        """
        if k < 1:
            raise BankError(f"k must be >= 1, got {k}")
        q = as_queries(queries, self.dim)
        if len(self) == 0:
            return [[] for _ in range(len(q))]
        fetch = min(k + len(self._ids) - len(self), len(self._ids))
        if self._index is not None and exact is not True:
            scores, rows = fs.search_index(self._index, self.index_spec, q, fetch, self._vectors_at)
        else:
            scores, rows = fs.exact_search(self._segments, q, fetch)
        kept = []
        for score_row, row_row in zip(scores, rows, strict=True):
            keep = [
                (float(s), int(r)) for s, r in zip(score_row, row_row, strict=True) if r >= 0 and not self._removed[r]
            ]
            kept.append(keep[:k])
        return self._matches(kept)

    def _matches(self, ranked: list[list[tuple[float, int]]]) -> list[list[Match]]:
        """(score, row) lists -> Match lists, reading all the metadata rows in one go."""
        flat = [row for ranking in ranked for _, row in ranking]
        if self._metadata.column("id").num_chunks > 1:  # take() on many chunks is ~100x slower
            self._metadata = self._metadata.combine_chunks()
        records = iter(self._metadata.take(pa.array(flat, pa.int64())).to_pylist() if flat else [])
        out = []
        for ranking in ranked:
            matches = []
            for score, row in ranking:
                record = {key: value for key, value in next(records).items() if value is not None}
                matches.append(Match(self._ids[row], score, record))
            out.append(matches)
        return out

    def mix(self, first: Any, second: Any, k: int = 10, *, exclude: Sequence[str] = ()) -> list[Match]:
        """Concept mixing: rows ranked by min(cos(row, first), cos(row, second)) (paper, Fig. 2)."""
        q = np.concatenate([as_queries(first, self.dim), as_queries(second, self.dim)])
        if len(q) != 2:
            raise BankError("mix takes exactly one first and one second query")
        both = fs.all_scores(self._segments, q).min(axis=0)
        hidden = self._removed.copy()
        rows = self._rows()
        for item_id in exclude:
            if item_id in rows:
                hidden[rows[item_id]] = True
        both[hidden] = -np.inf
        count = min(k, int((~hidden).sum()))
        if count == 0:
            return []
        best = np.argpartition(-both, count - 1)[:count]
        top = best[np.argsort(-both[best], kind="stable")]
        return self._matches([[(float(both[r]), int(r)) for r in top]])[0]

    # ------------------------------------------------------------------ approximate index
    def build_index(self, kind: str = "flat", *, check_recall: bool = True, **params: Any) -> dict[str, Any]:
        """Build the search index: "flat" (exact, default), "hnsw" or "ivfpq" (approximate).

        Returns a report with build time and, for approximate kinds, recall@10 against exact search
        on held-out perturbed queries.
        """
        self.compact()
        start = time.perf_counter()
        vectors = self.vectors()
        self._index, self.index_spec = fs.build(kind, vectors, **params)
        report: dict[str, Any] = {"kind": kind, "rows": len(vectors), "build_s": time.perf_counter() - start}
        report.update(self.index_spec)
        if self._index is not None and check_recall and len(vectors):
            report["recall@10"] = self.recall(k=min(10, len(vectors)))
        return report

    def recall(self, k: int = 10, queries: int = 500, seed: int = 0) -> float:
        """Recall@k of the approximate index against exact search, on perturbed rows as queries."""
        vectors = self.vectors()
        rng = np.random.default_rng(seed)
        picks = vectors[rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)]
        q = as_queries(picks + rng.normal(scale=0.5 / math.sqrt(self.dim), size=picks.shape), self.dim)
        approx = [{m.id for m in r} for r in self.search(q, k)]
        exact = [{m.id for m in r} for r in self.search(q, k, exact=True)]
        return float(np.mean([len(a & e) / max(1, len(e)) for a, e in zip(approx, exact, strict=True)]))

    def compact(self) -> None:
        """Drop removed rows and merge segments (done by save; rebuilds an approximate index)."""
        if not self._removed.any() and len(self._segments) <= 1:
            return
        keep = ~self._removed
        vectors = self.vectors()
        # the new index first: should it fail (too few rows left to train IVF-PQ), nothing has changed
        index, spec = (
            (None, self.index_spec)
            if self._index is None
            else fs.build(self.index_spec["kind"], vectors, **fs.params(self.index_spec))
        )
        self._metadata = self._metadata.filter(pa.array(keep))
        self._ids = [item_id for item_id, live in zip(self._ids, keep, strict=True) if live]
        self._segments = [np.ascontiguousarray(vectors)]
        self._removed = np.zeros(len(self._ids), dtype=bool)
        self._removed_count = 0
        self._row_of = None
        self._index, self.index_spec = index, spec

    @classmethod
    def from_objaverse(
        cls,
        h5_path: str | os.PathLike,
        uid_map_path: str | os.PathLike,
        names: str | os.PathLike | None = None,
        *,
        captions: str | os.PathLike | None = None,
        weights_id: str | None = None,
    ) -> EmbeddingBank:
        """The published Objaverse embeddings (``shape_emb_objaverse.h5`` + its uid map), optionally
        joined by uid with categories (``lvis-annotations.json.gz``, or a csv/parquet such as the LVIS csv
        class_idx,name,uid) and captions (Cap3D's csv), so that matches show names, not just uids.

        weights_id: the weights that made the file; default: the published checkpoint.
        """
        from . import objaverse as ov

        vectors, uids = ov.read_shape_embeddings(h5_path, uid_map_path)
        table = ov.read_lvis_categories(names) if names is not None else None
        texts = ov.read_cap3d_captions(captions) if captions is not None else None
        bank = cls(vectors.shape[1], weights_id=weights_id or ov.PUBLISHED_WEIGHTS_ID)
        bank.add(vectors, ov.objaverse_metadata(uids, table, texts))
        return bank

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the bank to a folder: new data files, then the manifest, atomically (see ``_bank_files``)."""
        folder = Path(path)
        self.compact()
        manifest = {
            "dim": self.dim,
            "rows": len(self),
            "weights_id": self.weights_id,
            "index": self.index_spec,
            "fields": self._metadata.column_names,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        files.write_bank_files(folder, self.vectors(), self._metadata.combine_chunks(), self._index, manifest)
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True, weights_id: Any = None) -> EmbeddingBank:
        """Open a saved bank (vectors memory-mapped by default). weights_id: refuse other weights.

        A save that lands while this reads is harmless (see ``_bank_files.read_current_generation``).
        """
        folder = Path(path)
        return files.read_current_generation(
            folder, mmap, lambda manifest, handles: cls._load(folder, manifest, handles, mmap, weights_id)
        )

    @classmethod
    def _load(
        cls, folder: Path, manifest: dict[str, Any], handles: dict[str, Any], mmap: bool, weights_id: Any
    ) -> EmbeddingBank:
        bank = cls(int(manifest["dim"]), weights_id=manifest.get("weights_id"))
        bank.check_weights(weights_id, what="queries")
        vectors, table = files.read_vectors_and_metadata(folder, manifest, handles, bank.dim, mmap)
        bank._segments = [vectors]
        bank._metadata = table.combine_chunks()
        bank._ids = table.column("id").to_pylist()
        if len(set(bank._ids)) != len(bank._ids):
            raise BankError(f"{folder}: corrupt bank: duplicate ids in the metadata")
        bank._removed = np.zeros(len(vectors), dtype=bool)
        bank.index_spec = manifest.get("index") or {"kind": "flat"}
        if bank.index_spec.get("kind") != "flat":
            if "index" not in handles:
                kind = bank.index_spec.get("kind")
                raise BankError(f"{folder}: the manifest names a {kind} index but its file is missing")
            index_path = files.data_file(folder, manifest, "index")
            bank._index = fs.read_index(handles["index"], index_path, bank.index_spec, len(vectors))
        bank.path = folder
        return bank
