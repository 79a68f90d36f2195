"""Data preparation on Ray against the one-machine path: objects/s for rendering and for frozen-CLIP targets.

    python benchmarks/cluster.py                      # 22 pybullet objects x 12 views, 1 and 2 workers
    python benchmarks/cluster.py --objects 30 --views 12 --workers 1,2,4

In the same run, for each worker count W: rendering with the process pool (``render_all(workers=W)``)
and as Ray tasks on a local Ray cluster of W CPUs (``render_all_ray``), the first run (Ray starts its
worker processes) and a second into a fresh folder (workers warm); then the targets of the packed
objects with ViT-B-32 (the real architecture, random weights: the cost is the same) in one process
with W torch threads (``compute_targets``) and with Ray Data on W one-CPU actors
(``compute_targets_ray``, model loading included). The ratio is Ray's objects/s over the one-machine
path's at the same W (< 1: Ray's overhead); scaling is objects/s at W over objects/s at the first W.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from training.catalog import pybullet_objects
from training.layout import DataFolder
from training.pack import pack
from training.ray_render import render_all_ray
from training.render import RenderSettings, render_all

# torch, ddclip_core and Ray are imported inside the functions: the process pool's spawned workers
# import this script, and should pay what `ddclip data render`'s workers pay for rendering, no more.

SKIP = {"humanoid", "laikago", "a1", "minitaur", "mini_cheetah", "panda", "xarm", "kuka"}  # many-link robots


def measure(
    w: int, objects: list, settings: RenderSettings, tmp: Path, weights: Path, batch_size: int, copies: int
) -> tuple:
    """(W, pool s, ray first s, ray warm s, cluster start s, targets one-process s, targets ray s)."""
    import torch

    from ddclip_core import load_model
    from ddclip_core.cluster import ModelSpec, connect, require_ray
    from training.ray_targets import compute_targets_ray
    from training.targets import compute_targets

    ray = require_ray()
    t = time.perf_counter()
    render_all(objects, tmp / f"pool{w}", settings, workers=w, progress=False)
    pool, t = time.perf_counter() - t, time.perf_counter()
    connect("local", num_cpus=w, object_store_mb=500)
    start, t = time.perf_counter() - t, time.perf_counter()
    render_all_ray(objects, tmp / f"ray{w}a", settings, shard_objects=2, progress=False)
    cold, t = time.perf_counter() - t, time.perf_counter()
    render_all_ray(objects, tmp / f"ray{w}b", settings, shard_objects=2, progress=False)
    warm = time.perf_counter() - t
    if not (tmp / "data").is_dir():  # targets of `copies` x the rendered objects: start-up costs amortise
        for folder in (tmp / f"pool{w}").iterdir():
            for k in range(copies):
                shutil.copytree(folder, tmp / "targets" / f"{folder.name}-{k}")
        pack(tmp / "targets", tmp / "data", progress=False)
    data = DataFolder(tmp / "data")
    torch.set_num_threads(w)
    t = time.perf_counter()  # model loading included, as for the actors
    compute_targets(data, load_model(weights, device="cpu"), batch_size=batch_size, progress=False)
    local, t = time.perf_counter() - t, time.perf_counter()
    shard = max(1, -(-data.num_objects // (2 * w)))  # two shards per actor
    spec = ModelSpec(str(weights), device="cpu")
    compute_targets_ray(data, spec, batch_size=batch_size, shard_objects=shard, actors=w, gpus=False, progress=False)
    remote = time.perf_counter() - t
    ray.shutdown()
    return w, pool, cold, warm, start, local, remote


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=22)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--copies", type=int, default=2, help="targets of each rendered object this many times")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from ddclip_core import DuoduoCLIP, DuoduoConfig, save_export
    from ddclip_core.cluster import require_ray

    ray = require_ray()
    objects = [obj for obj in pybullet_objects() if obj.uid not in SKIP][: args.objects]
    settings = RenderSettings(views=args.views)
    counts = [int(w) for w in args.workers.split(",")]
    n = len(objects)
    print(
        f"render: {n} objects x {args.views} views (224 px, TinyRenderer); targets: {n * args.copies} objects, "
        f"ViT-B-32 fp32 CPU, batch {args.batch_size}"
    )
    print(f"machine: {os.cpu_count()} cores (shared: figures are noisy); ray {ray.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = save_export(DuoduoCLIP(DuoduoConfig.from_arch("ViT-B-32")), tmp / "weights")
        rows = [measure(w, objects, settings, tmp, weights, args.batch_size, args.copies) for w in counts]
    base = rows[0]
    print(
        f"\n{'W':>2} {'render: pool':>13} {'ray 1st':>9} {'ray warm':>9} {'warm/pool':>10} {'pool xW1':>9} "
        f"{'ray xW1':>8} | {'targets: 1 proc':>16} {'ray data':>9} {'ray/proc':>9} {'proc xW1':>9} {'ray xW1':>8}"
    )
    t = n * args.copies
    for w, pool, cold, warm, _, local, ray_t in rows:
        print(
            f"{w:>2} {n / pool:>9.2f} o/s {n / cold:>5.2f} o/s {n / warm:>5.2f} o/s {pool / warm:>9.2f}x "
            f"{base[1] / pool:>8.2f}x {base[3] / warm:>7.2f}x | {t / local:>12.2f} o/s {t / ray_t:>5.2f} o/s "
            f"{local / ray_t:>8.2f}x {base[5] / local:>8.2f}x {base[6] / ray_t:>7.2f}x"
        )
    w1 = rows[0]
    print(
        f"\nper object, W={w1[0]}: render {w1[1] / n:.3f} s (pool), {w1[3] / n:.3f} s (ray, warm); "
        f"targets ({t} objects) {w1[5] / t:.3f} s (one process), {w1[6] / t:.3f} s (ray data, actor start included)"
    )
    print("local ray cluster start: " + ", ".join(f"W={r[0]} {r[4]:.1f} s" for r in rows))


if __name__ == "__main__":
    main()
