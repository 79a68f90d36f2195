"""Encoder benchmark: latency, objects/s, memory and FLOP-floor ratio of DuoduoCLIP.encode_views.

For each (batch, views) it prints the end-to-end time of encode_views on uint8 views
(preprocessing included), objects/s, peak memory, the model's FLOPs (torch's FlopCounterMode on
the real forward pass), the FLOP floor (FLOPs / dense matmul rate measured on the same device in
the same run) and measured/floor, plus a naive baseline measured in the same run: a per-view
open_clip encode_image loop with averaging (plain CLIP, one view per call).

    .venv/bin/python benchmarks/encoder.py                      # CPU grid, a few minutes
    .venv/bin/python benchmarks/encoder.py --device cuda --precision bf16 --paper-setting
"""

from __future__ import annotations

import argparse
import resource
import sys
import warnings

import numpy as np
import torch
from _timing import timed
from torch.utils.flop_counter import FlopCounterMode

from ddclip_core import load_model
from ddclip_core._runtime import autocast


def matmul_rate(device: torch.device, precision: str) -> float:
    """Best dense matmul FLOP/s of this device in the benchmark's precision (the ceiling): the max
    over square products and the encoder's own largest GEMM shape (tokens x 768 x 3072)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    shapes = [(2048, 2048, 2048), (4096, 4096, 4096), (9600, 768, 3072)]
    if device.type == "cuda":
        shapes.append((8192, 8192, 8192))
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        seconds = timed(lambda a=a, b=b: torch.mm(a, b), device, repeats=5, warmup=2)
        best = max(best, 2 * m * k * n / seconds)
    return best


def model_flops(model, batch: int, views: int) -> int:
    pixels = torch.randn(batch, views, 3, 224, 224, device=model.device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(pixels)
    return counter.get_total_flops()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS


def naive_baseline(model, objects: np.ndarray) -> torch.Tensor:
    """One open_clip encode_image call per view, then the mean: what one would write without us."""
    out = []
    with torch.inference_mode(), autocast(model.device, model.precision):
        for views in objects:
            per_view = [model.clip.encode_image(model.preprocessor([v], model.device)) for v in views]
            out.append(torch.cat(per_view).mean(0))
    return torch.stack(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--weights", help="weights file (default: random ViT-B-32; speed does not depend on values)")
    parser.add_argument("--views", default="1,2,4,6,8,12", help="view counts (default: 1,2,4,6,8,12)")
    parser.add_argument("--batches", default="1,16", help="objects per call (default: 1,16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per setting, median reported")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the per-view open_clip loop")
    parser.add_argument("--paper-setting", action="store_true", help="also time batch 200 x 12 views")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(args.weights, device=args.device, precision=args.precision)
    device = model.device
    rate = matmul_rate(device, args.precision)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; precision {args.precision}; torch {torch.__version__}")
    print(f"dense matmul rate: {rate / 1e9:.1f} GFLOP/s ({args.precision})")
    settings = [(b, f) for b in map(int, args.batches.split(",")) for f in map(int, args.views.split(","))]
    if args.paper_setting:
        settings.append((200, 12))

    header = (
        f"{'batch':>5} {'views':>5} {'ms/call':>9} {'obj/s':>8} {'GFLOP':>8} {'floor ms':>9} "
        f"{'x floor':>7} {'peak MB':>8} {'naive ms':>9} {'speedup':>7}"
    )
    print(header)
    rng = np.random.default_rng(0)
    for batch, views in settings:
        objects = rng.integers(0, 256, size=(batch, views, 224, 224, 3), dtype=np.uint8)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(lambda o=objects, b=batch: model.encode_views(o, batch_size=b), device, args.repeats)
        peak = peak_memory_mb(device)
        flops = model_flops(model, batch, views)
        floor = flops / rate
        naive = "-"
        speedup = "-"
        if not args.no_baseline and batch * views <= 256:
            naive_s = timed(lambda objects=objects: naive_baseline(model, objects), device, max(1, args.repeats - 1))
            naive, speedup = f"{naive_s * 1e3:9.1f}", f"{naive_s / seconds:7.2f}"
        print(
            f"{batch:5d} {views:5d} {seconds * 1e3:9.1f} {batch / seconds:8.1f} {flops / 1e9:8.1f} "
            f"{floor * 1e3:9.1f} {seconds / floor:7.2f} {peak:8.0f} {naive:>9} {speedup:>7}",
            flush=True,
        )
    print("x floor = measured time / (model FLOPs / dense matmul rate); speedup = naive loop time / ours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
