"""FAISS machinery behind EmbeddingBank: exact search over (memory-mapped) segments, and the
approximate indexes (HNSW, IVF-PQ with exact re-ranking). Index ids are bank row numbers."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

IP = faiss.METRIC_INNER_PRODUCT
_gpu: dict[str, Any] = {}


def gpu_available() -> bool:
    """True when the installed faiss was built with GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


SCORES_PER_BLOCK = 2**26  # bounds the (queries x rows) score matrix of one GEMM to 256 MB


def exact_search(segments: list[np.ndarray], q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner product over every row: (Q, k) scores and row numbers, best first.

    With GPU FAISS, faiss.knn_gpu. On CPU, one BLAS GEMM per block of rows and a top-k per block
    (torch.topk), merged: on the CPUs here this ran 5x faster than faiss's own flat search, whose
    bundled BLAS was slow, and within ~1.3x of the memory-bandwidth floor for a single query.
    """
    scores, rows, start = [], [], 0
    block_rows = max(4096, SCORES_PER_BLOCK // len(q))
    for segment in segments:
        for first in range(0, len(segment), block_rows):
            block = segment[first : first + block_rows]
            s, i = _block_topk(q, block, min(k, len(block)))
            scores.append(s)
            rows.append(i + start + first)
        start += len(segment)
    if len(scores) == 1:
        return scores[0], rows[0]
    s, i = np.concatenate(scores, axis=1), np.concatenate(rows, axis=1)
    values, order = _topk(s, min(k, s.shape[1]))
    return values, np.take_along_axis(i, order, axis=1)


GPU_MAX_K = 2048  # faiss's GPU k-selection takes k up to this; beyond, the CPU path answers


def _block_topk(q: np.ndarray, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if k <= GPU_MAX_K and gpu_available():  # (never run here: no GPU)
        if "res" not in _gpu:
            _gpu["res"] = faiss.StandardGpuResources()
        return faiss.knn_gpu(_gpu["res"], q, np.ascontiguousarray(block), k, metric=IP)
    return _topk(q @ block.T, k)


def _topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row, best first (torch's top-k; imported here so that opening a bank for its
    metadata, as `ddclip bank info` does, never pays torch's import)."""
    import torch

    best = torch.from_numpy(scores).topk(k, dim=1)
    return best.values.numpy(), best.indices.numpy()


def all_scores(segments: list[np.ndarray], q: np.ndarray) -> np.ndarray:
    """(Q, N) inner products with every row, segment after segment."""
    return np.concatenate(
        [(segment @ q.T).T for segment in segments if len(segment)] or [np.zeros((len(q), 0))], axis=1
    )


# each kind's parameters and their valid range (Faiss aborts the process, crashes or allocates without
# bound outside these, e.g. HNSW m=0 or m<0, IVF nlist=0; past a C int it raises OverflowError)
_MOST = 65_536
_PARAMETERS = {
    "flat": {},
    "hnsw": {"m": (2, 256), "ef_construction": (1, _MOST), "ef_search": (1, _MOST)},
    "ivfpq": {"nlist": (1, 2**31 - 1), "pq_m": (1, _MOST), "nprobe": (1, _MOST), "rerank": (1, _MOST)},
}


def _check_parameters(kind: str, n: int, dim: int, params: dict[str, Any]) -> None:
    if kind not in _PARAMETERS:
        raise ValueError(f"unknown index kind {kind!r}: use 'flat', 'hnsw' or 'ivfpq'")
    allowed = _PARAMETERS[kind]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"unknown {kind} index parameter(s) {', '.join(map(repr, unknown))}: {kind} takes {known}")
    for key, value in params.items():
        low, high = allowed[key]
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
            raise ValueError(f"index parameter {key} must be an integer in [{low}, {high}], got {value!r}")
    if params.get("nlist", 1) > n:
        raise ValueError(f"index parameter nlist ({params['nlist']}) must be at most the bank's {n} rows")
    if params.get("pq_m", 1) > dim:
        raise ValueError(f"index parameter pq_m ({params['pq_m']}) must be at most the dimension {dim}")


def build(kind: str, vectors: np.ndarray, **params: Any) -> tuple[faiss.Index | None, dict[str, Any]]:
    """A trained, filled index of ``kind`` over ``vectors`` and its spec (kind + parameters)."""
    n, dim = vectors.shape
    _check_parameters(kind, n, dim, params)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if kind == "flat":
        return None, {"kind": "flat"}
    if kind == "hnsw":
        m = int(params.get("m", 32))
        index = faiss.IndexHNSWFlat(dim, m, IP)
        index.hnsw.efConstruction = int(params.get("ef_construction", 80))
        index.add(vectors)
        return index, {
            "kind": "hnsw",
            "m": m,
            "ef_construction": index.hnsw.efConstruction,
            "ef_search": int(params.get("ef_search", 128)),
        }
    # ivfpq: the only kind left (_check_parameters refused unknown ones)
    if n < 1000:
        raise ValueError(f"ivfpq needs at least 1000 rows to train, the bank has {n}: use 'flat' or 'hnsw'")
    nlist = int(params.get("nlist", max(1, min(int(2 * math.sqrt(n)), n // 39))))
    pq_m = int(params.get("pq_m", max(1, dim // 8)))  # 8 dimensions per sub-quantizer
    if dim % pq_m:
        raise ValueError(f"pq_m={pq_m} must divide the dimension {dim}")
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{pq_m}", IP)
    train = min(n, max(50_000, 39 * nlist))  # k-means wants >= 39 points per list
    sample = vectors if train == n else vectors[np.sort(np.random.default_rng(0).choice(n, train, replace=False))]
    index.train(sample)
    index.add(vectors)
    return index, {
        "kind": "ivfpq",
        "nlist": nlist,
        "pq_m": pq_m,
        "nprobe": int(params.get("nprobe", 32)),
        "rerank": int(params.get("rerank", 16)),
    }


def params(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "kind"}


def search_index(
    index: faiss.Index, spec: dict[str, Any], q: np.ndarray, k: int, vectors_at: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate search; IVF-PQ candidates (rerank x k) are re-scored exactly with the stored vectors."""
    if spec["kind"] == "hnsw":
        return index.search(q, k, params=faiss.SearchParametersHNSW(efSearch=max(spec["ef_search"], k)))
    candidates = min(index.ntotal, k * spec["rerank"])
    _, rows = index.search(q, candidates, params=faiss.SearchParametersIVF(nprobe=spec["nprobe"]))
    safe = np.where(rows >= 0, rows, 0)
    exact = np.einsum("qd,qcd->qc", q, vectors_at(safe.ravel()).reshape(*safe.shape, -1))
    exact[rows < 0] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(exact, order, axis=1), np.take_along_axis(rows, order, axis=1)


def read_index(handle: BinaryIO, path: Path, spec: dict[str, Any], rows: int) -> faiss.Index:
    """The index saved at ``path``, read from its open ``handle`` (the name may be gone by now)."""
    try:
        index = faiss.read_index(faiss.PyCallbackIOReader(handle.read))
    except RuntimeError as exc:
        raise ValueError(f"{path}: corrupt faiss index: {str(exc).splitlines()[0]}") from exc
    if index.ntotal != rows:
        raise ValueError(f"{path}: index holds {index.ntotal} vectors but the bank has {rows} rows: rebuild it")
    return index
