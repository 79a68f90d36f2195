"""``benchmarks/_flops.py``: the FLOP floors of the benchmarks count every FLOP that runs. torch's
FlopCounterMode counts CPU attention and the TransformerEncoderLayer fast path as zero; a floor that
leaves them out is too low and makes our time look further from it than it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
try:
    from _flops import flops_by_op, forward_flops
    from encoder import weight_bytes
finally:  # the benchmarks' module names must not shadow anything for other tests
    sys.path.pop(0)


def test_attention_on_cpu_counts_its_two_matmuls():
    batch, heads, tokens, width = 2, 12, 50, 64
    q, k, v = (torch.randn(batch, heads, tokens, width) for _ in range(3))
    assert forward_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 2 * 2 * batch * heads * tokens**2 * width


def test_an_encoder_layers_fast_path_counts_its_matmuls_and_attention():
    width, heads, hidden, batch, tokens = 64, 4, 256, 3, 17
    layer = nn.TransformerEncoderLayer(width, heads, hidden, dropout=0.0, batch_first=True).eval()
    x = torch.randn(batch, tokens, width)
    rows = batch * tokens
    matmuls = 2 * rows * width * (3 * width + width + 2 * hidden)
    attention = 2 * 2 * batch * tokens**2 * width
    assert forward_flops(lambda: layer(x)) == matmuls + attention


def test_a_vit_b32_tower_counts_attention_on_top_of_its_matmuls(vit_b32):
    from torch.utils.flop_counter import FlopCounterMode

    vit_b32.set_precision("fp32")  # in 16 bit without AMX attention is two plain matmuls, counted anyway
    pixels = torch.randn(1, 2, 3, 224, 224)
    with FlopCounterMode(display=False) as plain, torch.inference_mode():
        vit_b32(pixels)
    extra = forward_flops(lambda: vit_b32(pixels)) - plain.get_total_flops()
    # 12 blocks; below the threshold each view attends alone (50 tokens), above both views together
    # (100 tokens); the last block only asks with each view's CLS token
    tokens, width, below = 50, 768, vit_b32.layers_threshold
    alone = below * 2 * 4 * tokens**2 * width
    joint = (12 - below - 1) * 4 * (2 * tokens) ** 2 * width + 4 * 2 * (2 * tokens) * width
    assert extra == alone + joint


def test_attention_ops_are_told_apart_from_the_matmuls():
    q = torch.randn(1, 2, 8, 16)
    weight = torch.randn(16, 16)

    def both() -> None:
        F.scaled_dot_product_attention(q @ weight, q, q)

    by_op = flops_by_op(both)
    attention = sum(flops for op, flops in by_op.items() if "attention" in op)
    assert attention == 2 * 2 * 2 * 8 * 8 * 16
    assert sum(by_op.values()) - attention == 2 * 2 * 8 * 16 * 16


def test_the_bandwidth_floor_reads_matrices_in_the_precision_and_vectors_in_fp32(vit_b32):
    params = list(vit_b32.clip.visual.parameters())
    vectors = sum(p.numel() for p in params if p.dim() < 2)
    assert weight_bytes(vit_b32, "fp32") == 4 * sum(p.numel() for p in params) > 300 * 2**20  # ViT-B-32: 88 M
    assert weight_bytes(vit_b32, "bf16") == 2 * (sum(p.numel() for p in params) - vectors) + 4 * vectors
