"""Object memory benchmark: write-through cost, query latency with and without filters, memory per object,
and the start-up time of a large memory, on this machine, all in one run.

- write-through: one delivered batch (8 objects x 512-d, their sightings) into the SQLite file
  (sync normal and full) against the same memory kept in RAM (goal: <= 2 ms added per batch);
- queries: p50/p99 at 1 k, 10 k and 100 k objects, no filter and a time + place filter (goal: p50 <= 5 ms
  at 100 k with the filter), against the memory-bandwidth floor of scanning every embedding;
- memory: resident bytes per remembered object; start-up: opening a 100 k-object memory.

    .venv/bin/python benchmarks/memory.py                  # ~2 min
    .venv/bin/python benchmarks/memory.py --sizes 1000,10000
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import copy_bandwidth, percentiles, rss_mb

from ddclip_core.memory import MemoryFilter, ObjectMemory, Sighting
from ddclip_core.stamped import Pose, Stamp

DIM = 512


def batch(rng: np.random.Generator, start: int, size: int, objects: int) -> list:
    out = []
    for i in range(size):
        n = (start + i) % objects
        frame = "map" if n % 4 else "odom"
        pose = Pose(frame, Stamp(n), tuple(rng.uniform(-20, 20, 3)))
        out.append((Sighting(f"track-{n}", Stamp(n, 0), 6, "camera", pose, [("a mug", 0.3)]), rng.normal(size=DIM)))
    return out


def write_through(folder: Path, batches: int) -> None:
    rng = np.random.default_rng(0)
    print(f"\nwrite-through, {batches} batches of 8 objects (512-d) into a memory of 1000 objects")
    results = {}
    for label, path, sync in (("in RAM (:memory:)", None, "normal"), ("file, sync normal", folder / "n", "normal"),
                              ("file, sync full", folder / "f", "full")):  # fmt: skip
        memory = ObjectMemory(DIM, max_objects=1000, identity="bench", path=path, sync=sync)
        times = []
        for b in range(batches):
            work = batch(rng, 8 * b, 8, 1000)
            start = time.perf_counter()
            memory.record(work)
            times.append((time.perf_counter() - start) * 1e3)
        memory.close()
        results[label] = percentiles(times)
        print(f"  {label:<18} p50 {results[label][0]:6.2f} ms  p99 {results[label][1]:6.2f} ms per batch")
    base = results["in RAM (:memory:)"][0]
    for label in ("file, sync normal", "file, sync full"):
        added = results[label][0] - base
        print(f"  {label}: +{added:.2f} ms per batch over RAM ({results[label][0] / base:.2f}x; goal <= 2 ms added)")


def queries(folder: Path, sizes: list[int], repeats: int) -> None:
    bandwidth = copy_bandwidth(0.25)
    print(f"\nqueries (k=10), copy bandwidth {bandwidth / 1e9:.1f} GB/s measured now")
    rng = np.random.default_rng(2)
    for size in sizes:
        path = folder / f"q{size}"
        before = rss_mb() * 2**20
        memory = ObjectMemory(DIM, max_objects=size, identity="bench", path=path)
        start = time.perf_counter()
        for first in range(0, size, 500):
            memory.record(batch(rng, first, min(500, size - first), size))
        fill_s = time.perf_counter() - start
        per_object = (rss_mb() * 2**20 - before) / size
        q = rng.normal(size=DIM)
        filtered = MemoryFilter(seen_after=Stamp(size // 2), frame="map", centre=(0.0, 0.0, 0.0), radius=8.0)
        rows = []
        for label, where in (("no filter", None), ("time + place", filtered)):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                found, _ = memory.search(q, 10, where)
                times.append((time.perf_counter() - start) * 1e3)
            p50, p99 = percentiles(times)
            rows.append((label, p50, p99, len(found)))
        floor_ms = size * DIM * 4 / bandwidth * 1e3
        memory.close()
        gc.collect()
        start = time.perf_counter()
        reopened = ObjectMemory(DIM, max_objects=size, identity="bench", path=path)
        open_s = time.perf_counter() - start
        reopened.close()
        print(f"  {size:>7} objects: filled in {fill_s:.1f} s, {per_object / 1024:.1f} KiB RSS per object, "
              f"reopened in {open_s:.2f} s; scan floor {floor_ms:.2f} ms")  # fmt: skip
        for label, p50, p99, found in rows:
            ratio = f"{p50 / floor_ms:.1f}x the scan floor" if label == "no filter" else "goal p50 <= 5 ms at 100 k"
            print(f"    {label:<13} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  ({found} found; {ratio})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="memory sizes (default: 1000,10000,100000)")
    parser.add_argument("--batches", type=int, default=300, help="write-through batches (default: 300)")
    parser.add_argument("--repeats", type=int, default=200, help="queries per setting (default: 200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ddclip-memory-bench-") as folder:
        write_through(Path(folder), args.batches)
        queries(Path(folder), [int(s) for s in args.sizes.split(",")], args.repeats)


if __name__ == "__main__":
    main()
