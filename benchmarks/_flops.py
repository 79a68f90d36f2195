"""FLOPs of a forward pass, attention included.

torch's ``FlopCounterMode`` has formulas for the CUDA attention kernels but none for the one PyTorch
runs on CPU (``_scaled_dot_product_flash_attention_for_cpu``), so on CPU it counts attention as zero
FLOPs: 6 % of DuoduoCLIP's tower at 12 views, whose floor was that much too low. Nor has it one for
``nn.TransformerEncoderLayer``'s inference fast path (one fused op: GS-CLIP's fusion transformer), whose
matmuls went uncounted with its attention. This counts both, attention by torch's own formula (two
batched matmuls: q @ k^T and scores @ v).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

_CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_ENCODER_LAYER = torch.ops.aten._transformer_encoder_layer_fwd


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _encoder_layer_flops(src_shape, embed_dim, num_heads, qkv_weight_shape, *args, out_shape=None, **kwargs) -> int:
    """``_transformer_encoder_layer_fwd``: qkv, attention, output projection and the two MLP matmuls, on
    every token of the padded batch (what runs). args[10] is ffn_weight_1, (hidden, width), in its schema."""
    batch, length, width = src_shape
    hidden = args[10][0]
    matmuls = 2 * batch * length * width * (qkv_weight_shape[0] + width + 2 * hidden)
    head = (batch, num_heads, length, width // num_heads)
    return matmuls + sdpa_flop_count(head, head, head)


def forward_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn()`` (run once, without autograd): matmul-class ops and attention."""
    return sum(flops_by_op(fn).values())


def flops_by_op(fn: Callable[[], object]) -> dict[str, int]:
    """FLOPs of ``fn()`` per op name (``aten.addmm``, ``aten._scaled_dot_product_flash_attention_for_cpu``,
    ...): attention ops have "attention" in their names."""
    mapping = {_CPU_ATTENTION: _cpu_attention_flops, _ENCODER_LAYER: _encoder_layer_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.inference_mode():
        fn()
    return {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}
