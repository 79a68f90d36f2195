"""The image tower under ``torch.compile`` (inductor), the other way a user could speed it up on CPU.

Compiles the plain multi-view forward (``encode_packed_views`` on the open_clip modules, no packed path)
with inductor's CPU settings for inference: frozen weights, weights pre-packed for the GEMM library,
and ``max-autotune``, which times inductor's own C++ GEMM templates (AMX micro-kernels in bf16) against
the library calls for each GEMM shape and keeps the faster. 16-bit runs the whole tower in that type
(LayerNorms and residuals included; our path keeps those in fp32). Shapes are static: every batch and
view count is compiled anew, as a user with fixed-size inputs would.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from ddclip_core._multiview import encode_packed_views


class _Tower(nn.Module):
    def __init__(self, visual: nn.Module, view_counts: list[int], layers_threshold: int) -> None:
        super().__init__()
        self.visual, self.view_counts, self.layers_threshold = visual, view_counts, layers_threshold

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_packed_views(self.visual, pixels, self.view_counts, self.layers_threshold)


def compiled_encoder(model, dtype: torch.dtype, pixels: torch.Tensor) -> tuple[Callable[[], torch.Tensor], float]:
    """(a call of the compiled tower on ``pixels`` (B, F, 3, H, W), seconds its compile took on that input)."""
    import torch._inductor.config as inductor

    inductor.freezing = True
    inductor.cpp.weight_prepack = True
    batch, views = pixels.shape[:2]
    tower = _Tower(copy.deepcopy(model.clip.visual).to(dtype), [views] * batch, model.layers_threshold).eval()
    compiled = torch.compile(tower, mode="max-autotune", dynamic=False)
    flat = pixels.flatten(0, 1).to(dtype).contiguous()
    start = time.perf_counter()
    with torch.inference_mode():
        compiled(flat)
    return (lambda: compiled(flat)), time.perf_counter() - start
