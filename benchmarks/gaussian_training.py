"""GS-CLIP data preparation and training speed on real objects.

Per object: depth render of 12 views (pybullet TinyRenderer), then fusion + voxel averaging + lift
(``object_features``). Training: GaussianTraining-style steps (encoder forward, 0.5/0.5 contrastive
loss against targets, backward, AdamW) on batches of the lifted objects, objects/s per preset.
Targets are random unit vectors: speed does not depend on their values.

    .venv/bin/python benchmarks/gaussian_training.py --threads 2
    .venv/bin/python benchmarks/gaussian_training.py --device cuda --presets small,default --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from training.catalog import pybullet_objects
from training.config import GaussianConfig
from training.gaussian_data import FuseSettings, object_features
from training.gaussian_module import build_encoder
from training.loss import ContrastiveLoss
from training.render import RenderSettings, render_all

OBJECTS = ("duck", "mug", "teddy", "table", "r2d2", "bunny")


def prepare(out: Path, points: int) -> tuple[list[np.ndarray], list[float], list[float]]:
    """Lifted features per object, and seconds per object for the depth render and for fusion + lift."""
    catalogue = {obj.uid: obj for obj in pybullet_objects()}
    features, render_s, lift_s = [], [], []
    for uid in OBJECTS:
        start = time.perf_counter()
        render_all([catalogue[uid]], out, RenderSettings(depth=True), workers=1, progress=False)
        render_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        feats, _, _ = object_features(out / uid, FuseSettings(max_points=points))
        lift_s.append(time.perf_counter() - start)
        features.append(feats)
    return features, render_s, lift_s


def train_speed(objects: list[np.ndarray], preset: str, batch: int, steps: int, device: torch.device) -> float:
    """Objects per second of full training steps (median step time)."""
    encoder = build_encoder(GaussianConfig(preset=preset), 512).to(device)
    loss = ContrastiveLoss(0.5, 0.5).to(device)
    optimizer = torch.optim.AdamW([*encoder.parameters(), loss.logit_scale], lr=1e-3)
    points = max(len(o) for o in objects)
    features = torch.zeros(batch, points, 14)
    mask = torch.zeros(batch, points, dtype=torch.bool)
    for i in range(batch):
        obj = objects[i % len(objects)]
        features[i, : len(obj)], mask[i, : len(obj)] = torch.from_numpy(obj), True
    features, mask = features.to(device), mask.to(device)
    targets = torch.nn.functional.normalize(torch.randn(2, batch, 512, device=device), dim=-1)
    times = []
    for step in range(steps + 1):  # the first step warms up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = loss(encoder(features, mask), targets[0], targets[1])["loss"]
        optimizer.zero_grad()
        out.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=2048, help="Gaussians per object (default: 2048)")
    parser.add_argument("--presets", default="small", help="encoder presets to time (default: small)")
    parser.add_argument("--batch", type=int, default=16, help="objects per training step (default: 16)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (default: 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="ddclip-gsbench-") as tmp:
        objects, render_s, lift_s = prepare(Path(tmp), args.points)
    print(f"{len(objects)} pybullet objects, 12 views of 224 px, up to {args.points} Gaussians each")
    print(f"  depth render    {statistics.median(render_s) * 1e3:7.0f} ms/object (median)")
    print(f"  fusion + lift   {statistics.median(lift_s) * 1e3:7.0f} ms/object (median), "
          f"{statistics.mean(len(o) for o in objects):.0f} Gaussians on average")  # fmt: skip
    for preset in args.presets.split(","):
        speed = train_speed(objects, preset, args.batch, args.steps, device)
        print(f"  training, {preset:8s} {speed:7.1f} objects/s ({device.type}, batch {args.batch})")


if __name__ == "__main__":
    main()
