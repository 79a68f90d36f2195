"""Why one view is far from the FLOP floor: the encoder's GEMMs at one view's 50 rows, by how many weights
they cycle through.

One view runs each of the tower's 48 weight matrices once on 50 rows, so every pass reads all of them
(335 MiB in fp32) and each is used for only 50 rows. This runs the encoder's own GEMM shapes (qkv, out,
c_fc, c_proj of 1, 2, 4, 8 and 12 blocks, oneDNN-packed as ``ddclip_core._prepacked`` packs them) in a
chain, over and over, and prints their rate as a share of the dense matmul rate measured in the same run,
next to what the arithmetic at the one-block rate followed by one read of the chain's weights at the
measured read bandwidth would take (``serial``: no overlap of the two) and the larger of the two
(``overlap``: loads hidden behind the arithmetic). While the chain fits the
cache share this process gets, the 50-row GEMMs run near the dense rate; past it they run at the
serial estimate: the kernel waits for each weight. ``--rows`` also times 600 rows (one object of 12
views), where each weight serves 12x the arithmetic.

    .venv/bin/python benchmarks/gemm_working_set.py            # ~1 min
"""

from __future__ import annotations

import argparse
import sys

import torch
from _timing import read_bandwidth, timed
from encoder import matmul_rate

WIDTH = 768
BLOCK_SHAPES = [(WIDTH, 3 * WIDTH), (WIDTH, WIDTH), (WIDTH, 4 * WIDTH), (4 * WIDTH, WIDTH)]  # (in, out)


def chain(blocks: int) -> tuple[list[tuple[int, int]], list[torch.Tensor], list[torch.Tensor]]:
    shapes = BLOCK_SHAPES * blocks
    weights = [torch.randn(n, k) * 0.02 for k, n in shapes]
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights]
    return shapes, packed, [torch.zeros(n) for _, n in shapes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="50,600", help="rows per GEMM (default 50,600: one view, 12 views)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    cpu = torch.device("cpu")
    rate = matmul_rate(cpu, "fp32")
    full_bytes = sum(4 * k * n for k, n in BLOCK_SHAPES) * 12
    bandwidth = read_bandwidth(full_bytes, cpu)
    print(f"CPU x{torch.get_num_threads()} threads; dense fp32 matmul rate {rate / 1e9:.1f} GFLOP/s")
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s on {full_bytes / 2**20:.0f} MiB (12 blocks' weights)")
    header = f"{'rows':>5} {'blocks':>6} {'MiB':>5} | {'ms':>7} {'GFLOP/s':>8} {'x rate':>6}"
    print(f"{header} | {'overlap ms':>10} {'serial ms':>9} {'ms/serial':>9}")
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            hot_rate = None
            for blocks in (1, 2, 4, 8, 12):
                shapes, packed, biases = chain(blocks)
                inputs = {k: torch.randn(rows, k) for k in (WIDTH, 4 * WIDTH)}

                def run(shapes=shapes, packed=packed, biases=biases, inputs=inputs) -> None:
                    for (k, _), weight, bias in zip(shapes, packed, biases, strict=True):
                        torch.ops.mkldnn._linear_pointwise(inputs[k], weight, bias, "none", [], "")

                seconds = timed(run, cpu, repeats=args.repeats, warmup=3)
                flops = sum(2 * rows * k * n for k, n in shapes)
                nbytes = sum(4 * k * n for k, n in shapes)
                hot_rate = hot_rate or flops / seconds  # one block's weights: the most cache-resident chain
                arithmetic, read = flops / hot_rate, nbytes / bandwidth
                overlap, serial = max(arithmetic, read), arithmetic + read
                print(
                    f"{rows:5d} {blocks:6d} {nbytes / 2**20:5.0f} | {seconds * 1e3:7.2f} {flops / seconds / 1e9:8.1f} "
                    f"{flops / seconds / rate:6.2f} | {overlap * 1e3:10.2f} {serial * 1e3:9.2f} {seconds / serial:9.2f}"
                )
    print(
        "x rate = GFLOP/s / the dense rate; serial = the FLOPs at the one-block rate, then one read of the "
        "chain's weights at the read bandwidth; overlap = the larger of the two (loads hidden behind the "
        "arithmetic); ms/serial near 1 past the cache: the kernel does not overlap them"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
