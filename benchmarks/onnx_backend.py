"""ONNX Runtime vs PyTorch on the CPU: latency, objects/s, FLOP-floor ratio and drift of each engine, one run.

(Not named onnx.py: run as a script, its folder comes first on sys.path and would shadow the onnx package.)

Engines: ONNX Runtime CPU fp32, int8-dynamic and int8-static (calibrated on the shipped renders), and PyTorch
fp32 and bf16 (autocast), all through the same ``encode_views`` on uint8 views (preprocessing included).
For each (objects x views) it prints the median time per call, objects/s, the FLOP floor (the model's FLOPs
over the dense matmul rate measured in this run, fp32 for every engine but PyTorch bf16, which gets the bf16
rate) and the ratio, the speed-up over PyTorch fp32 and the lowest cosine to PyTorch fp32 on those views.
Then the drift on the shipped real-object renders: lowest cosine to PyTorch fp32 and agreement of zero-shot
top-1 labels (each object with 1 view, each single view, each object with all 12).

    .venv/bin/python benchmarks/onnx_backend.py                  # random ViT-B-32: speed does not depend on the values
    .venv/bin/python benchmarks/onnx_backend.py --weights Four_1to6F_bs1600_LT6.ckpt --settings 1x1,1x12
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from _timing import interleaved
from encoder import matmul_rate, model_flops

from ddclip_core import load_model
from ddclip_core.onnx.export import export_onnx
from ddclip_core.onnx.precision import example_objects

# Zero-shot labels: the shipped objects' own and everyday distractors.
LABELS = [
    "a rubber duck", "a teddy bear", "a red mug", "a soccer ball", "a chair", "a table", "a laptop", "a bottle",
    "a shoe", "a banana", "a car", "a lamp", "a plant in a pot", "a bowl", "a backpack", "a toy robot",
]  # fmt: skip


def export_engines(model, folder: Path) -> dict[str, float]:
    """fp32 by the exporter, int8 engines converted from it; returns seconds per engine."""
    seconds = {}
    for precision in ("fp32", "int8-dynamic", "int8-static"):
        start = time.perf_counter()
        reuse = None if precision == "fp32" else folder / "fp32"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(model, folder / precision, precision=precision, reuse=reuse)
        seconds[precision] = time.perf_counter() - start
    return seconds


def drift(engines: dict, reference_name: str = "torch fp32") -> list[str]:
    """Lowest cosine to the reference and top-1 label agreement on the shipped real-object renders."""
    objects, _ = example_objects()
    singles = [[view] for views in objects for view in views]
    inputs = {"1 view": [views[:1] for views in objects], "each view": singles, "12 views": objects}
    results = {}
    for name, engine in engines.items():
        texts = engine.encode_text(LABELS)
        results[name] = {key: engine.encode_views(value) for key, value in inputs.items()}
        results[name]["top1"] = {key: (emb @ texts.T).argmax(1) for key, emb in results[name].items()}
    reference = results[reference_name]
    distinct = len(set(torch.cat(list(reference["top1"].values())).tolist()))
    lines = [f"({distinct} distinct labels among {reference_name}'s top-1 answers: the fewer, the easier agreement)"]
    for name, result in results.items():
        cosine = min(float((result[key] * reference[key]).sum(-1).min()) for key in inputs)
        agree = sum(int((result["top1"][key] == reference["top1"][key]).sum()) for key in inputs)
        total = sum(len(value) for value in inputs.values())
        lines.append(f"{name:<25} {cosine:10.6f} {agree:4d}/{total} ({100 * agree / total:5.1f}%)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="weights file (default: random ViT-B-32; speed does not depend on values)")
    parser.add_argument(
        "--settings", default="1x1,1x12,16x12", help="objects x views per call (default 1x1,1x12,16x12)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed turns per setting, median reported")
    parser.add_argument("--engines-dir", help="keep the exported engines here (default: a temporary folder)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)  # the same random weights in every run: the drift figures depend on them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(args.weights, device="cpu")
    device = model.device
    rates = {precision: matmul_rate(device, precision) for precision in ("fp32", "bf16")}
    print(f"CPU x{torch.get_num_threads()} torch threads; torch {torch.__version__}; onnxruntime {ort.__version__}")
    print(f"dense matmul rate: {rates['fp32'] / 1e9:.1f} GFLOP/s fp32, {rates['bf16'] / 1e9:.1f} GFLOP/s bf16")

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.engines_dir or scratch)
        seconds = export_engines(model, folder)
        sizes = {p: sum(f.stat().st_size for f in (folder / p).glob("*.onnx")) / 2**20 for p in seconds}
        for precision, took in seconds.items():
            how = "exported" if precision == "fp32" else "converted from fp32"
            check = json.loads((folder / precision / "config.json").read_text())["check"]
            views, text = check["views_max_abs_error"], check["text_max_abs_error"]
            print(
                f"onnx {precision:<13} {how:>19} in {took:6.1f} s, {sizes[precision]:4.0f} MB; export check vs torch "
                f"fp32 (1+2+3 views): max abs error {views:.2e}, text {text:.2e}"
            )
        engines = {f"onnxruntime {p}": load_model(folder / p, backend="onnxruntime", device="cpu") for p in seconds}
        engines = {"torch fp32": model, "torch bf16": copy.deepcopy(model).set_precision("bf16"), **engines}
        print(f"onnxruntime providers: {ort.get_available_providers()} (CPU used; no GPU on this machine)\n")
        header = (
            f"{'engine':<25} {'batch':>5} {'views':>5} {'ms/call':>9} {'obj/s':>7} {'floor ms':>9} {'x floor':>7} "
            f"{'vs torch fp32':>13} {'min cosine':>10}"
        )
        print(header)
        rng = np.random.default_rng(0)
        for setting in args.settings.split(","):
            batch, views = map(int, setting.split("x"))
            objects = rng.integers(0, 256, size=(batch, views, 224, 224, 3), dtype=np.uint8)
            flops = model_flops(model, batch, views)
            outputs = {}

            def call(name, engine, objects=objects, batch=batch, outputs=outputs):
                outputs[name] = engine.encode_views(objects, batch_size=batch)

            # In turns (a, b, c, a, b, c, ...), so that the shared machine's load changes hit every engine alike.
            took = interleaved({name: partial(call, name, e) for name, e in engines.items()}, device, args.repeats)
            reference, base = outputs["torch fp32"], took["torch fp32"]
            for name in engines:
                floor = flops / rates["bf16" if name == "torch bf16" else "fp32"]
                cosine = float((outputs[name] * reference).sum(-1).min())
                print(
                    f"{name:<25} {batch:5d} {views:5d} {took[name] * 1e3:9.1f} {batch / took[name]:7.2f} "
                    f"{floor * 1e3:9.1f} {took[name] / floor:7.2f} {base / took[name]:12.2f}x {cosine:10.6f}",
                    flush=True,
                )
        print("\ndrift on the shipped real-object renders (4 objects; 1 view, each of 12 views, 12 views):")
        print("RANDOM weights unless --weights: the labels mean nothing, but agreement between engines is measurable")
        print(f"{'engine':<25} {'min cosine':>10} top-1 labels agreeing with torch fp32")
        for line in drift(engines):
            print(line)
        print("x floor = measured / (model FLOPs / dense matmul rate); int8 engines measured against the fp32 rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
