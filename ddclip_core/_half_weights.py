"""16-bit inference without autocast's weight casts on every call (CUDA, and CPUs without ``_prepacked``).

Under autocast the weights stay fp32 and each matmul casts its weight to 16 bit, again on every call:
autocast keeps a cast only until its region ends. For ViT-B/32's image tower that is ~350 MB read and
~175 MB written per call before any arithmetic (on a Jetson Orin's ~200 GB/s about 2.6 ms, an estimate:
no GPU has run this). ``HalfTower`` (kept by ``_tower_cache.TowerCache``) is a copy of the tower in which
every tensor that autocast casts to 16 bit anyway is stored in that type; autocast then finds it in its
type and casts nothing. The result is bit for bit autocast's with the fp32 weights: the same rounding,
done once. LayerNorm parameters stay fp32, as autocast runs layer norms in fp32. Only the architecture
``PrepackedVisual`` reproduces is copied: a LayerScale's fp32 gamma, say, would make a product fp32 that
turns 16-bit here. ``DDCLIP_HALF_WEIGHTS=0`` turns it off (autocast alone, as before).
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from ._prepacked import PrepackedVisual, packing_available
from ._runtime import _DTYPES


class HalfTower:
    """How ``TowerCache`` makes and keeps the 16-bit copy: in fp16 / bf16 where the packed path does not
    apply (it already carries the precision)."""

    state = staticmethod(PrepackedVisual.state)
    supports = staticmethod(PrepackedVisual.supports)

    @staticmethod
    def available(device: torch.device, precision: str) -> bool:
        if precision not in _DTYPES or os.environ.get("DDCLIP_HALF_WEIGHTS", "1") == "0":
            return False
        return not packing_available(device, precision)

    @staticmethod
    def build(visual: nn.Module, precision: str) -> nn.Module:
        return half_copy(visual, _DTYPES[precision])


def half_copy(visual: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``visual`` with every parameter but the LayerNorms' in ``dtype``; LayerNorm parameters
    are shared with ``visual``. No fp32 copy is made on the way (the deep copy takes the cast tensors)."""
    norms = {id(p) for module in visual.modules() if isinstance(module, nn.LayerNorm) for p in module.parameters()}
    memo: dict[int, object] = {}
    for parameter in visual.parameters():
        if id(parameter) in norms:
            memo[id(parameter)] = parameter
        else:
            memo[id(parameter)] = nn.Parameter(parameter.detach().to(dtype), requires_grad=False)
    with torch.no_grad():
        return copy.deepcopy(visual, memo).eval()
