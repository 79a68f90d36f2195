"""16-bit weights benchmark: the image tower in 16 bit from a copy with 16-bit weights against autocast
alone (fp32 weights cast again on every call), on the same views in the same run.

This is the path CUDA takes for fp16 / bf16 (and a CPU without the pre-packed oneDNN path: ``--device cpu``
runs it with ``DDCLIP_CPU_PREPACK=0``). Printed per setting (objects x views): both times (median, in
turns), their ratio, the time saved, and the floor of what autocast's casts cost: the weights' fp32 bytes
read and 16-bit bytes written, at the read bandwidth measured in the same run. Embeddings of the two paths
are compared too (they should be equal to the bit).

    .venv/bin/python benchmarks/half_weights.py                                  # CPU, bf16, 1x1 1x12 8x12
    .venv/bin/python benchmarks/half_weights.py --device cuda --settings 1x12,200x12   # GPU (never run here)
"""

from __future__ import annotations

import argparse
import os
import warnings

import torch
from _timing import interleaved, read_bandwidth

from ddclip_core import load_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16"))
    parser.add_argument("--settings", default="1x1,1x12,8x12", help="objects x views list")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    os.environ["DDCLIP_CPU_PREPACK"] = "0"  # on CPU: the modules' path, the one CUDA takes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: speed does not depend on the values
        model = load_model(device=device).set_precision(args.precision)
    weights = [p for p in model.clip.visual.parameters() if p.ndim >= 2]
    fp32_bytes = sum(p.numel() * 4 for p in weights)
    bandwidth = read_bandwidth(fp32_bytes, device)
    cast_floor = fp32_bytes * 1.5 / bandwidth  # read fp32, write 16 bit (writes counted at the read rate)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()}"
    print(f"device: {name}; {args.precision}; torch {torch.__version__}")
    print(f"weight matrices: {fp32_bytes / 2**20:.0f} MiB in fp32; read bandwidth {bandwidth / 1e9:.1f} GB/s;")
    print(f"autocast's casts cost at least {cast_floor * 1e3:.1f} ms a call (fp32 read + 16-bit written)")
    header = f"{'setting':>8} | {'copy ms':>8} {'autocast ms':>11} {'ratio':>6} {'saved ms':>8} {'cast floor':>10}"
    print(f"{header} | equal")
    for setting in args.settings.split(","):
        objects, views = (int(n) for n in setting.split("x"))
        pixels = torch.rand(objects, views, 3, 224, 224, device=device)

        def encode(half: str, pixels: torch.Tensor = pixels) -> torch.Tensor:
            os.environ["DDCLIP_HALF_WEIGHTS"] = half
            with torch.inference_mode():
                return model.encode_views(pixels)

        same = torch.equal(encode("1"), encode("0"))
        times = interleaved({"copy": lambda: encode("1"), "autocast": lambda: encode("0")}, device, args.repeats)
        copy, alone = times["copy"], times["autocast"]
        print(
            f"{setting:>8} | {copy * 1e3:8.1f} {alone * 1e3:11.1f} {alone / copy:6.2f} {(alone - copy) * 1e3:8.1f} "
            f"{cast_floor * 1e3:10.1f} | {'yes' if same else 'NO'}"
        )
    os.environ.pop("DDCLIP_HALF_WEIGHTS", None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
