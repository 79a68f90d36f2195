"""Bank benchmark on a synthetic Objaverse-sized bank (default 800,000 x 512) in the published h5 layout.

Prints: import and load time, resident memory, query latency p50/p99 for 1 and 64 queries at k=10
for exact search (FAISS), a numpy brute-force baseline, and the approximate indexes with their
recall@10 against exact; the memory-bandwidth floor of exact search (bytes scanned / copy
bandwidth measured in the same run) and each method's ratio to it.

    .venv/bin/python benchmarks/bank.py                       # ~10 min on 2 cores, ~6 GB disk in /tmp
    .venv/bin/python benchmarks/bank.py --rows 100000 --index hnsw,ivfpq
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from _timing import copy_bandwidth, percentiles, rss_mb

from ddclip_core import _faiss_search as fs
from ddclip_core.bank import EmbeddingBank


def make_published_files(folder: Path, rows: int, dim: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    h5_path, map_path = folder / "shape_emb_objaverse.h5", folder / "shape_emb_objaverse_model_to_idx.json"
    centres = rng.normal(size=(2000, dim)).astype(np.float32)
    with h5py.File(h5_path, "w") as handle:
        data = handle.create_dataset("shape_feat", shape=(rows, dim), dtype=np.float32)
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            block = centres[rng.integers(0, len(centres), n)] + rng.normal(scale=0.8, size=(n, dim)).astype(np.float32)
            data[start : start + n] = block
    map_path.write_text(json.dumps({f"{i:032x}": i for i in range(rows)}))
    return h5_path, map_path


def latencies(fn, queries: np.ndarray, batch: int, repeats: int) -> tuple[float, float]:
    """p50 and p99 milliseconds per call of fn on `batch` queries at a time."""
    times = []
    for i in range(repeats):
        q = queries[(i * batch) % len(queries) :][:batch]
        if len(q) < batch:
            q = queries[:batch]
        start = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - start) * 1e3)
    return percentiles(times)


def numpy_bruteforce(vectors: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    scores = q @ vectors.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=800_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--index", default="ivfpq,hnsw", help="approximate indexes to measure (comma list, or none)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per setting")
    parser.add_argument("--workdir", help="where to write the synthetic files (default: a temp folder, removed)")
    args = parser.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ddclip-bank-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bandwidth = copy_bandwidth()
        print(f"rows {args.rows} x {args.dim}; copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write)")
        print(f"faiss GPU: {fs.gpu_available()}")
        start = time.perf_counter()
        h5_path, map_path = make_published_files(work, args.rows, args.dim)
        print(f"synthetic published files written in {time.perf_counter() - start:.1f} s")

        start = time.perf_counter()
        bank = EmbeddingBank.from_objaverse(h5_path, map_path)
        bank.save(work / "bank")
        print(f"import-objaverse + save: {time.perf_counter() - start:.1f} s")
        del bank

        base_rss = rss_mb()
        start = time.perf_counter()
        bank = EmbeddingBank.load(work / "bank")
        load_s = time.perf_counter() - start
        print(f"load (memory-mapped): {load_s * 1e3:.0f} ms, RSS +{rss_mb() - base_rss:.0f} MB")
        rng = np.random.default_rng(1)
        vectors = bank._segments[0]
        picks = np.sort(rng.choice(args.rows, 512, replace=False))
        queries = vectors[picks] + rng.normal(scale=0.02, size=(512, args.dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        bank.search(queries[:1], 10, exact=True)  # fault the mapped pages in
        print(f"RSS after the first exact search: +{rss_mb() - base_rss:.0f} MB (the mapped vectors)")

        floor_ms = vectors.nbytes / bandwidth * 1e3
        print(f"memory-bandwidth floor of one exact scan: {floor_ms:.1f} ms\n")
        print(f"{'method':<34} {'queries':>7} {'p50 ms':>8} {'p99 ms':>8} {'x floor':>8} {'recall@10':>9}")
        rows = {}
        for batch in (1, 64):
            repeats = args.repeats if batch == 1 else max(5, args.repeats // 5)
            for name, fn in (
                ("exact (bank)", lambda q: bank.search(q, 10, exact=True)),
                ("numpy brute force (baseline)", lambda q: numpy_bruteforce(vectors, q)),
            ):
                p50, p99 = latencies(fn, queries, batch, repeats)
                rows[(name, batch)] = p50
                print(f"{name:<34} {batch:>7} {p50:8.2f} {p99:8.2f} {p50 / floor_ms:8.2f} {'1.000':>9}", flush=True)
        for kind in [k for k in args.index.split(",") if k and k != "none"]:
            start = time.perf_counter()
            report = bank.build_index(kind, check_recall=False)
            build_s = time.perf_counter() - start
            recall = bank.recall(k=10, queries=500)
            spec = {k: v for k, v in report.items() if k not in ("kind", "rows", "build_s")}
            print(f"-- {kind} built in {build_s:.0f} s {json.dumps(spec)}")
            for batch in (1, 64):
                repeats = args.repeats if batch == 1 else max(5, args.repeats // 5)
                p50, p99 = latencies(lambda q: bank.search(q, 10), queries, batch, repeats)
                speedup = rows[("exact (bank)", batch)] / p50
                print(
                    f"{kind + f' ({speedup:.0f}x faster than exact)':<34} {batch:>7} {p50:8.2f} {p99:8.2f} "
                    f"{p50 / floor_ms:8.3f} {recall:9.3f}",
                    flush=True,
                )
        for batch in (1, 64):
            ratio = rows[("numpy brute force (baseline)", batch)] / rows[("exact (bank)", batch)]
            print(f"exact vs numpy baseline, {batch} queries: {ratio:.2f}x faster")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
