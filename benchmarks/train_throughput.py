"""Training throughput: objects/s, peak memory and the time each step waits for data, per view count.

    python benchmarks/train_throughput.py                       # CPU: ViT-B-32, batch 8, views 1..6
    python benchmarks/train_throughput.py --device gpu --batch-size 400 --precision 16-mixed   # the published setting
    python benchmarks/train_throughput.py --data OUT/data       # a real data folder (default: synthetic, same layout)

Runs the real Lightning training loop (`training.train`) for a few steps per view count F
(min_views = max_views = F) and times it with a callback: "wait" is the time from the end of one
step to the start of the next (the loader, when it does not keep up), "step" the forward+backward.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytorch_lightning as pl
import torch

from ddclip_core import DuoduoCLIP, DuoduoConfig, save_export
from training import train as train_module
from training.config import TrainConfig
from training.layout import IMAGE_TARGETS, IMAGES, TEXT_TARGETS, UID_MAP


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.waits: list[float] = []
        self.steps: list[float] = []
        self._end = self._start = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._start = time.perf_counter()
        if self._end is not None:
            self.waits.append(self._start - self._end)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._end = time.perf_counter()
        self.steps.append(self._end - self._start)


def synthetic_data(root: Path, objects: int, dim: int) -> Path:
    """A data folder in the published layout with random content (throughput does not depend on it)."""
    rng = np.random.default_rng(0)
    with h5py.File(root / IMAGES, "w") as f:
        imgs = f.create_dataset("imgs", (objects, 12, 3, 224, 224), np.uint8, chunks=(1, 12, 3, 224, 224))
        for i in range(objects):
            imgs[i] = rng.integers(0, 256, (12, 3, 224, 224), dtype=np.uint8)
    (root / UID_MAP).write_text(json.dumps({f"obj{i}": i for i in range(objects)}))
    with h5py.File(root / IMAGE_TARGETS, "w") as f:
        f["img_feat"] = rng.standard_normal((objects, 12, dim)).astype(np.float16)
    with h5py.File(root / TEXT_TARGETS, "w") as f:
        f["text_feat"] = rng.standard_normal((objects * 2, dim)).astype(np.float16)
        f["text_offsets"] = np.arange(0, objects * 2 + 1, 2, dtype=np.int64)
    return root


def run(args: argparse.Namespace, views: int, data: Path, weights: Path, out: Path) -> dict:
    config = TrainConfig.load(
        None,
        [
            f"data.root={data}",
            f"model.init_weights={weights}",
            f"data.batch_size={args.batch_size}",
            f"data.min_views={views}",
            f"data.max_views={views}",
            f"data.num_workers={args.workers}",
            f"trainer.max_steps={args.steps}",
            f"trainer.out_dir={out}",
            f"trainer.accelerator={args.device}",
            "trainer.devices=1",
            f"trainer.precision={args.precision}",
            "trainer.progress_bar=false",
            "trainer.limit_val_batches=0",
        ],
    )
    timer = StepTimer()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_module.train(config, callbacks=[timer])
    steps = timer.steps[1:]  # the first step includes warm-up
    waits = timer.waits[1:] or [0.0]
    step, wait = statistics.median(steps), statistics.median(waits)
    memory = (
        torch.cuda.max_memory_allocated() / 2**30
        if torch.cuda.is_available() and args.device == "gpu"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "views": views,
        "step_s": step,
        "wait_s": wait,
        "wait_pct": 100 * wait / (step + wait),
        "objects_per_s": args.batch_size / (step + wait),
        "peak_gib": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--views", default="1,2,3,4,5,6")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--data", help="data folder with targets (default: synthetic)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_float32_matmul_precision("high")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = DuoduoCLIP(DuoduoConfig.from_arch(args.arch))
        weights = save_export(model, tmp / "weights")
        if args.data:
            data = Path(args.data)
        else:
            objects = max(args.batch_size * (args.steps + 1), 16)
            data = synthetic_data(Path(tempfile.mkdtemp(dir=tmp)), objects, model.embed_dim)
        print(
            f"{args.arch}, batch {args.batch_size}, {args.device}, precision {args.precision}, "
            f"{args.workers} loader workers, {torch.get_num_threads()} threads, data: {args.data or 'synthetic'}"
        )
        print(f"{'views':>5} {'step s':>8} {'wait s':>8} {'wait %':>7} {'obj/s':>8} {'peak GiB':>9}")
        for views in (int(v) for v in args.views.split(",")):
            r = run(args, views, data, weights, tmp / f"run{views}")
            print(
                f"{r['views']:>5} {r['step_s']:>8.3f} {r['wait_s']:>8.3f} {r['wait_pct']:>6.1f}% "
                f"{r['objects_per_s']:>8.2f} {r['peak_gib']:>9.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
