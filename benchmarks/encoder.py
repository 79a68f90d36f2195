"""Encoder benchmark: DuoduoCLIP's image side against the machine's FLOP floor and the published code.

For each (batch, views), all in one run and timed in turns (a, b, a, b, ...) so that load changes on a
shared machine hit every contender alike:
  - ours, fp32, on the same preprocessed tensor as the published code, and end to end from uint8 views
    (``encode_views``, preprocessing included: what the node runs);
  - the published implementation (``--published CHECKOUT``, github.com/3dlg-hcvc/DuoduoCLIP cloned
    outside this repository) with the same weights on the same tensor, and the largest difference of
    the two unit embeddings;
  - ours in 16 bit (``--half bf16|fp16``; default bf16 where the CPU has bf16 kernels, else none), with
    its cosine to fp32 and its speed-up;
  - with ``--compiled``, the plain tower under ``torch.compile`` (inductor, max-autotune, frozen weights;
    ``_compiled.py``) in fp32 and in the 16-bit precision, compiled for each setting (its compile time
    printed), the other speed-up a user could reach for;
  - on CPU, for each precision, the time our forward pass spends inside the library kernels (GEMMs,
    attention, softmax; ``_kernels.py``, from torch's profiler), against the floor and against our time:
    how far oneDNN / MKL / PyTorch attention are from the floor on this network's shapes, and what lies
    outside them; and, after the table, the GEMMs' and attention's own rates (their FLOPs / their time)
    as a share of the dense matmul rate;
and, for each precision, the floor: the larger of the FLOP floor, the network's FLOPs (matmuls and
attention, ``_flops.py``) / the best dense matmul rate measured here in that precision (the max of MKL
``torch.mm`` and oneDNN with pre-packed weights, what our CPU path uses, over square products and the
encoder's own GEMM shapes), and the bandwidth floor, the tower's weights in that precision (read at least
once per pass) / the read bandwidth measured here on a buffer of their size. One object is small enough
that the second can matter: 16-bit weights at 1 x 1.

    .venv/bin/python benchmarks/encoder.py --published /tmp/DuoduoCLIP            # CPU, 1x1 1x12 16x12
    .venv/bin/python benchmarks/encoder.py --device cuda --settings 1x12,200x12   # GPU (never run here)
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import warnings

import numpy as np
import torch
from _flops import flops_by_op
from _kernels import KernelClock
from _timing import interleaved, read_bandwidth, timed

from ddclip_core import load_model
from ddclip_core._prepacked import packing_available
from ddclip_core.precision import candidates

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_rate(device: torch.device, precision: str) -> float:
    """Best dense matmul FLOP/s of this device in ``precision``: the ceiling every floor is measured by."""
    dtype = DTYPES[precision]
    shapes = [(2048, 2048, 2048), (4096, 4096, 4096), (9600, 768, 3072), (600, 768, 3072)]
    if device.type == "cuda":
        shapes.append((8192, 8192, 8192))
    onednn = packing_available(device, precision)
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        runs = [lambda a=a, b=b: torch.mm(a, b)]
        if onednn:
            packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), None)
            runs.append(lambda a=a, w=packed: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], ""))
        for run in runs:
            best = max(best, 2 * m * k * n / timed(run, device, repeats=5, warmup=2))
    return best


def weight_bytes(model, precision: str) -> int:
    """Bytes of the image tower's weights as the forward pass reads them: matrices in ``precision``
    (what the packed path and autocast multiply), vectors (norms, biases, embeddings) in fp32."""
    size = torch.finfo(DTYPES[precision]).bits // 8
    return sum(p.numel() * (size if p.dim() >= 2 else 4) for p in model.clip.visual.parameters())


def model_flops(model, batch: int, views: int) -> tuple[int, int]:
    """(all FLOPs, attention's) of one forward pass."""
    pixels = torch.randn(batch, views, 3, 224, 224, device=model.device)
    by_op = flops_by_op(lambda: model(pixels))
    return sum(by_op.values()), sum(flops for op, flops in by_op.items() if "attention" in op)


def kernel_rates(clock: KernelClock, flops: int, attention_flops: int, rate: float, weights_s: float) -> str:
    """The GEMMs' and attention's time inside the kernels, and their FLOP rate as a share of the matmul
    rate; for the GEMMs also the time of their FLOPs at the rate and the weights' read one after the other
    (what a kernel that does not overlap the two would take)."""
    parts = []
    for part, part_flops in (("GEMMs", flops - attention_flops), ("attention", attention_flops)):
        seconds = clock.median(part="gemm" if part == "GEMMs" else "attention")
        share = part_flops / seconds / rate if seconds > 0 else float("nan")
        parts.append(f"{part} {seconds * 1e3:.1f} ms at {share:.2f} of it")
        if part == "GEMMs":
            parts[-1] += f" (FLOPs at the rate, then weights read: {(part_flops / rate + weights_s) * 1e3:.1f} ms)"
    return ", ".join(parts)


def compiled_line(contenders: dict, times: dict, compile_s: dict, reference: torch.Tensor) -> str:
    """Each compiled precision's time, ours / it (above 1: the compiled tower is faster), its cosine to our
    fp32 embeddings and how long its compile took."""
    parts = []
    for name, ours in (("compiled", "ours"), ("compiled half", "half")):
        if name in compile_s:
            with torch.inference_mode():
                embedding = torch.nn.functional.normalize(contenders[name]().float(), dim=-1)
            cosine = (embedding * reference).sum(-1).min().item()
            parts.append(
                f"{'fp32' if name == 'compiled' else 'half'} {times[name] * 1e3:.1f} ms, ours / it "
                f"{times[ours] / times[name]:.2f}, cosine {cosine:.5f}, compile {compile_s[name]:.0f} s"
            )
    return "; ".join(parts)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", help="weights file (default: random ViT-B-32; speed does not depend on values)")
    parser.add_argument("--settings", default="1x1,1x12,16x12", help="batch x views list (default: 1x1,1x12,16x12)")
    parser.add_argument("--published", metavar="CHECKOUT", help="a DuoduoCLIP checkout to time side by side")
    parser.add_argument("--half", choices=["bf16", "fp16", "none"], help="16-bit precision to compare (default: auto)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per contender, median reported")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--compiled", action="store_true", help="also time torch.compile (inductor, max-autotune) of the tower"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(args.weights, device=args.device, precision="fp32")
    device = model.device
    half = None if args.half == "none" else args.half or next(iter(candidates(device)), None)
    # its own copy: each model keeps pre-packed weights for one precision at a time
    half_model = copy.deepcopy(model).set_precision(half) if half else None
    published = None
    if args.published:
        from _published import load_published_visual, published_encoder

        published = published_encoder(load_published_visual(args.published, model.clip.visual), model.layers_threshold)
    rates = {"fp32": matmul_rate(device, "fp32")}
    if half:
        rates[half] = matmul_rate(device, half)
    weights = {p: weight_bytes(model, p) for p in rates}
    bandwidth = read_bandwidth(weights["fp32"], device)
    weights_s = {p: b / bandwidth for p, b in weights.items()}  # the bandwidth floor: one read of the weights
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; CPU kernels: {torch.backends.cpu.get_cpu_capability()}")
    print("dense matmul rate: " + ", ".join(f"{p} {r / 1e9:.1f} GFLOP/s" for p, r in rates.items()))
    print(
        f"read bandwidth {bandwidth / 1e9:.1f} GB/s; weights read once: "
        + ", ".join(f"{p} {weights[p] / 2**20:.0f} MiB in {weights_s[p] * 1e3:.1f} ms" for p in rates)
    )

    print(
        f"{'setting':>8} {'GFLOP':>7} | {'fp32 ms':>8} {'x floor':>7} {'e2e ms':>8} {'obj/s':>7} | "
        f"{'publ. ms':>8} {'speedup':>7} {'max|d|':>8} | {'half ms':>8} {'x floor':>7} {'vs fp32':>7} {'cosine':>8}"
        f" | {'kern ms':>8} {'x floor':>7} {'ours/k':>6} | {'h kern':>8} {'x floor':>7} {'ours/k':>6} | {'peak MB':>7}"
    )
    rng = np.random.default_rng(0)
    inside: list[str] = []  # per setting and precision: the kernels' GEMMs and attention against the rate
    compiled_lines: list[str] = []
    for setting in args.settings.split(","):
        batch, views = (int(v) for v in setting.lower().split("x"))
        objects = rng.integers(0, 256, size=(batch, views, 224, 224, 3), dtype=np.uint8)
        pixels = model.preprocessor(list(objects.reshape(-1, 224, 224, 3)), device).view(batch, views, 3, 224, 224)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        contenders = {
            "ours": lambda p=pixels: model.encode_views(p.clone()),
            "e2e": lambda o=objects, b=batch: model.encode_views(o, batch_size=b),
        }
        if published is not None:
            contenders["published"] = lambda p=pixels: published(p)
        if half:
            contenders["half"] = lambda p=pixels: half_model.encode_views(p.clone())
        compile_s = {}
        if args.compiled:
            from _compiled import compiled_encoder

            for name, precision in (("compiled", "fp32"), ("compiled half", half)):
                if precision:
                    contenders[name], compile_s[name] = compiled_encoder(model, DTYPES[precision], pixels)
        clocks = {}
        if device.type == "cpu":
            clocks["ours"] = KernelClock(contenders["ours"])
            if half:
                clocks["half"] = KernelClock(contenders["half"])
            contenders.update({f"{name} kernels": clock for name, clock in clocks.items()})
        with torch.inference_mode():
            times = interleaved(contenders, device, args.repeats)
            reference = model.encode_views(pixels)
        flops, attention_flops = model_flops(model, batch, views)
        floor = {p: max(flops / r, weights_s[p]) for p, r in rates.items()}
        for name, precision in (("ours", "fp32"), ("half", half)):
            if name in clocks:
                rate, read_s = rates[precision], weights_s[precision]
                bound = "FLOP" if flops / rate >= read_s else "bandwidth"
                inside.append(
                    f"{setting:>8} {precision} ({bound} floor {floor[precision] * 1e3:.1f} ms): "
                    + kernel_rates(clocks[name], flops, attention_flops, rate, read_s)
                )
        row = (
            f"{setting:>8} {flops / 1e9:7.1f} | {times['ours'] * 1e3:8.1f} {times['ours'] / floor['fp32']:7.2f} "
            f"{times['e2e'] * 1e3:8.1f} {batch / times['e2e']:7.1f} | "
        )
        if published is not None:
            theirs = torch.nn.functional.normalize(published(pixels).float(), dim=-1)
            diff = (theirs - reference).abs().max().item()
            row += f"{times['published'] * 1e3:8.1f} {times['published'] / times['ours']:7.2f} {diff:8.1e} | "
        else:
            row += f"{'-':>8} {'-':>7} {'-':>8} | "
        if half:
            with torch.inference_mode():
                low = half_model.encode_views(pixels)
            cosine = (low * reference).sum(-1).min().item()
            row += (
                f"{times['half'] * 1e3:8.1f} {times['half'] / floor[half]:7.2f} "
                f"{times['ours'] / times['half']:7.2f} {cosine:8.5f} | "
            )
        else:
            row += f"{'-':>8} {'-':>7} {'-':>7} {'-':>8} | "
        for name, precision in (("ours", "fp32"), ("half", half)):
            if name in clocks:
                k = clocks[name].median()
                row += f"{k * 1e3:8.1f} {k / floor[precision]:7.2f} {times[name] / k:6.2f} | "
            else:
                row += f"{'-':>8} {'-':>7} {'-':>6} | "
        print(row + f"{peak_memory_mb(device):7.0f}", flush=True)
        if compile_s:
            compiled_lines.append(f"{setting:>8} " + compiled_line(contenders, times, compile_s, reference))
            torch._dynamo.reset()  # frees the compiled graphs' frozen weights
    print(
        "x floor = time / max(FLOPs / matmul rate, weight bytes / read bandwidth) of that precision; "
        "speedup = published time / ours (fp32, same "
        "tensor); max|d| = largest difference of the unit embeddings; e2e = from uint8 views, preprocessing "
        f"included; half = {half or 'none'}, vs fp32 = ours fp32 time / half time, cosine = min over objects; "
        "kern = time inside the library kernels of our forward pass (GEMMs, attention, softmax; profiled in "
        "place), ours/k = our time / that: what lies outside the kernels"
    )
    if compiled_lines:
        print("torch.compile of the plain tower (inductor, max-autotune, frozen weights), timed in the same turns:")
        print("\n".join(compiled_lines))
    if inside:
        print("inside the kernels, each part's FLOPs / its time, as a share of the dense matmul rate of its precision:")
        print("\n".join(inside))
    return 0


if __name__ == "__main__":
    sys.exit(main())
