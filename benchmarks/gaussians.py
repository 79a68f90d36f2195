"""GS-CLIP benchmark: Gaussian encoder latency, objects/s and peak memory vs number of Gaussians,
lift time per object, and the cost against the multi-view encoder for the same object at 12 views.

The object is a synthetic coloured surface (a noisy torus) of N points, lifted to N Gaussians
(lift_points) and encoded (GSCLIPEncoder, default config, random weights: speed does not depend on
values). The multi-view side renders the same points into 12 views (224 px, orthographic, painter's
order) and times DuoduoCLIP.encode_views with random ViT-B-32 weights, in the same run.

    .venv/bin/python benchmarks/gaussians.py --threads 1            # CPU, about a minute
    .venv/bin/python benchmarks/gaussians.py --device cuda --batch 32
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import warnings

import numpy as np
import torch
from _flops import forward_flops
from _timing import timed

from ddclip_core import load_model
from ddclip_core._runtime import resolve_device
from ddclip_core.gaussians import GSCLIPEncoder, GSEncoderConfig, lift_points
from ddclip_core.gaussians.encoder import pad_objects


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS so far


def torus(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n points on a noisy torus, coloured by angle: a closed surface like a scanned object."""
    rng = np.random.default_rng(seed)
    u, v = rng.uniform(0, 2 * np.pi, (2, n))
    points = np.stack([(1 + 0.35 * np.cos(v)) * np.cos(u), (1 + 0.35 * np.cos(v)) * np.sin(u), 0.35 * np.sin(v)], 1)
    points += rng.normal(scale=0.005, size=points.shape)
    colours = np.stack([(np.sin(u) + 1) / 2, (np.cos(v) + 1) / 2, np.full(n, 0.3)], 1)
    return points.astype(np.float32), colours.astype(np.float32)


def render_views(points: np.ndarray, colours: np.ndarray, count: int = 12, size: int = 224) -> np.ndarray:
    """(count, size, size, 3) uint8 orthographic renders on white from azimuths around the object."""
    views = np.full((count, size, size, 3), 255, np.uint8)
    radius = np.abs(points).max()
    for i, angle in enumerate(np.linspace(0, 2 * np.pi, count, endpoint=False)):
        c, s = np.cos(angle), np.sin(angle)
        rotated = points @ np.array([[c, 0, -s], [s * 0.5, 0.87, c * 0.5], [s * 0.87, -0.5, c * 0.87]]).T
        pixels = ((rotated[:, :2] / radius * 0.45 + 0.5) * (size - 1)).astype(int)
        far_to_near = np.argsort(-rotated[:, 2])  # later writes win: nearest drawn last
        views[i, pixels[far_to_near, 1], pixels[far_to_near, 0]] = (colours[far_to_near] * 255).astype(np.uint8)
    return views


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="1000,4000,16000,64000", help="Gaussians per object")
    parser.add_argument("--batch", type=int, default=8, help="objects per call for objects/s (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per setting, median reported")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--views", type=int, default=12, help="views for the multi-view comparison (default 12)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    torch.manual_seed(0)
    encoder = GSCLIPEncoder(GSEncoderConfig()).to(device).eval()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    params = sum(p.numel() for p in encoder.parameters()) / 1e6
    print(f"device: {name}; torch {torch.__version__}; GS encoder {params:.1f} M parameters (default config)")
    print(f"peak memory before the GS runs: {peak_memory_mb(device):.0f} MB")

    # GS encoder first, alone in the process, so that the CPU peak RSS is its own and not the ViT's.
    rows, objects = [], {}
    for size in map(int, args.sizes.split(",")):
        points, colours = torus(size)
        lift_s = timed(lambda p=points, c=colours: lift_points(p, c), device, args.repeats)
        gaussians = lift_points(points, colours)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        encode_s = timed(lambda g=gaussians: encoder.encode(g), device, args.repeats)
        batch = [gaussians] * args.batch
        batch_s = timed(lambda b=batch: encoder.encode(b, batch_size=len(b)), device, max(1, args.repeats - 1))
        peak = peak_memory_mb(device)
        features, mask = pad_objects([gaussians.to_features()])
        flops = forward_flops(lambda f=features, m=mask: encoder(f.to(device), m.to(device)))
        rows.append((size, lift_s, encode_s, flops, batch_s, peak))
        objects[size] = (points, colours)

    logging.getLogger("ddclip_core.factory").setLevel(logging.ERROR)  # random weights on purpose
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        multiview = load_model(None, device=device)
    mv_flops = forward_flops(lambda: multiview(torch.randn(1, args.views, 3, 224, 224, device=device)))
    print(
        f"{'gaussians':>9} {'lift ms':>8} {'enc ms':>8} {'GFLOP':>6} {'obj/s b1':>8} {'obj/s b' + str(args.batch):>9} "
        f"{'peak MB':>8} {'mv ms':>8} {'mv GFLOP':>8} {'mv/gs':>6}"
    )
    for size, lift_s, encode_s, flops, batch_s, peak in rows:
        views = render_views(*objects[size], args.views)
        mv_s = timed(lambda v=views: multiview.encode_views(v), device, args.repeats)
        print(
            f"{size:9d} {lift_s * 1e3:8.1f} {encode_s * 1e3:8.1f} {flops / 1e9:6.2f} {1 / encode_s:8.1f} "
            f"{args.batch / batch_s:9.1f} {peak:8.0f} {mv_s * 1e3:8.1f} {mv_flops / 1e9:8.1f} {mv_s / encode_s:6.2f}",
            flush=True,
        )
    print(
        "lift = lift_points (kNN scales, no refinement); enc = GSCLIPEncoder.encode of one object (features, "
        f"padding and forward); mv = DuoduoCLIP.encode_views of the same object rendered to {args.views} views "
        "(preprocessing included); mv/gs = mv ms / enc ms; GFLOP counts matmul-class ops and attention (_flops.py); "
        "peak MB (GS runs only): CUDA max allocated, or the process's peak RSS so far on CPU"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
