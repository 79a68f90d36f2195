"""GS-CLIP refinement: time per object at 1 k / 4 k / 16 k Gaussians, and what it buys on held-out views.

A real object (pybullet's duck, 12 depth renders at 224 px, TinyRenderer): the depth of 9 views is
fused into a coloured cloud, N points are drawn from it and lifted (``lift_points``), and the lift is
refined against those 9 views (GS-CLIP's recipe: 500 steps, opacity reset every 50). Printed per N:
the lift time (the un-refined baseline), the refinement's median step and total time, the time of
GS-CLIP's 500 steps (projected from the median step when ``--steps`` is fewer) and its ratio to the
lift, and the L1 error of the re-rendered splats on the 3 held-out views, before and after.
``--downscale 4`` fits the views at 56 px (the cloud still comes from the 224 px depth).
On CUDA (``--device cuda``) the gsplat kernels refine, and the torch renderer is timed next to them.

    .venv/bin/python benchmarks/refinement.py --downscale 4               # CPU: all three sizes, 56 px views
    .venv/bin/python benchmarks/refinement.py --sizes 1000 --steps 50     # a quick look
    .venv/bin/python benchmarks/refinement.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ddclip_core.gaussians import lift_points, refine_gaussians, render_gaussians
from training.catalog import pybullet_objects
from training.gaussian_data import fuse_views, posed_images, read_render
from training.render import RenderSettings, render_all

HELD_OUT = 3


def held_out_l1(gaussians, views, device: str) -> float:
    rendered = render_gaussians(gaussians, views, device=device)
    targets = np.stack([v.image / 255.0 if v.image.dtype == np.uint8 else v.image for v in views])
    return float(np.abs(rendered - targets).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,4000,16000", help="Gaussians per object (default: 1000,4000,16000)")
    parser.add_argument("--steps", type=int, default=500, help="refinement steps (default: 500, GS-CLIP's)")
    parser.add_argument("--size", type=int, default=224, help="render size in pixels (default: 224)")
    parser.add_argument("--downscale", type=int, default=1, help="fit the views this many times smaller (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1; 0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    obj = next(o for o in pybullet_objects() if o.uid == "duck")
    with tempfile.TemporaryDirectory(prefix="ddclip-refine-") as tmp:
        render_all([obj], Path(tmp), RenderSettings(size=args.size, depth=True), progress=False)
        views, depth, meta = read_render(Path(tmp) / obj.uid)
    posed = [view.downscaled(args.downscale) for view in posed_images(views, meta["cameras"])]
    train, held_out = posed[:-HELD_OUT], posed[-HELD_OUT:]
    points, colours = fuse_views(views[:-HELD_OUT], depth[:-HELD_OUT], meta["cameras"][:-HELD_OUT])
    backends = ["gsplat", "torch"] if args.device.startswith("cuda") else ["torch"]
    fit = args.size // args.downscale
    print(f"duck: {len(train)} views of {fit} px to fit, {HELD_OUT} held out; fused cloud of {len(points)} "
          f"points; {args.steps} steps, opacity reset every 50; device {args.device}, threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    print(f"{'Gaussians':>9} {'renderer':>8} {'lift s':>8} {'step ms':>8} {'total s':>8} {'500 steps s':>11} "
          f"{'x lift':>8} {'held-out L1 lift -> refined':>28}")  # fmt: skip
    for count in (int(n) for n in args.sizes.split(",")):
        keep = np.sort(np.random.default_rng(0).choice(len(points), min(count, len(points)), replace=False))
        start = time.perf_counter()
        lifted = lift_points(points[keep], colours[keep])
        lift_s = time.perf_counter() - start
        before = held_out_l1(lifted, held_out, args.device)
        for backend in backends:
            result = refine_gaussians(lifted, train, steps=args.steps, device=args.device, backend=backend)
            step_ms = statistics.median(np.diff([0.0, *result.step_times])) * 1e3
            after = held_out_l1(result.gaussians, held_out, args.device)
            recipe = step_ms * 500 / 1e3  # GS-CLIP's 500 steps: measured when --steps 500, else projected
            print(f"{len(lifted):>9} {backend:>8} {lift_s:>8.3f} {step_ms:>8.0f} {result.seconds:>8.1f} "
                  f"{recipe:>10.0f}{'' if args.steps == 500 else '*'} {recipe / lift_s:>8.0f} "
                  f"{before:>13.4f} -> {after:.4f}", flush=True)  # fmt: skip
    if args.steps != 500:
        print(f"* projected: 500 x the median of {args.steps} measured steps; held-out L1 after {args.steps} steps")


if __name__ == "__main__":
    main()
