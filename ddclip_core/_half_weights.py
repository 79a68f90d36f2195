"""16-bit inference without autocast's weight casts on every call (CUDA, and CPUs without ``_prepacked``).

Under autocast the weights stay fp32 and each matmul casts its weight to 16 bit, again on every call:
autocast keeps a cast only until its region ends. For ViT-B/32's image tower that is ~350 MB read and
~175 MB written per call before any arithmetic (on a Jetson Orin's ~200 GB/s about 2.6 ms, an estimate:
no GPU has run this). ``HalfTowerCache`` keeps a copy of the tower in which every tensor that autocast
casts to 16 bit anyway is stored in that type; autocast then finds it in its type and casts nothing.
The result is bit for bit autocast's with the fp32 weights: the same rounding, done once. LayerNorm
parameters stay fp32, as autocast runs layer norms in fp32. Only the architecture ``PrepackedVisual``
reproduces is copied: a LayerScale's fp32 gamma, say, would make a product fp32 that turns 16-bit here.
``DDCLIP_HALF_WEIGHTS=0`` turns it off (autocast alone, as before).
"""

from __future__ import annotations

import copy
import os
import threading

import torch
from torch import nn

from ._prepacked import PrepackedVisual

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class HalfTowerCache:
    """One 16-bit copy of an image tower at a time, made again when any of its weights changes (a new
    tensor or an in-place update: the tensors' version counters are part of the key; an edit through
    ``.data`` bypasses them, as it does autograd's checks) and dropped when no copy is wanted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: tuple[tuple, nn.Module] | None = None

    # A copied or unpickled model makes its own copy again: the lock does not copy.
    def __deepcopy__(self, memo: dict) -> HalfTowerCache:
        return HalfTowerCache()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def get(self, visual: nn.Module, precision: str) -> nn.Module | None:
        """The tower with 16-bit weights for ``precision``; None where autocast alone must run it."""
        dtype = _DTYPES.get(precision)
        if dtype is None or os.environ.get("DDCLIP_HALF_WEIGHTS", "1") == "0" or not PrepackedVisual.supports(visual):
            self.clear()  # fp32 now, say: a copy kept would hold half the tower's size for nothing
            return None
        key = (precision, *((p.data_ptr(), p._version) for p in visual.parameters()))
        with self._lock:
            if self._entry is None or self._entry[0] != key:
                self._entry = None  # free the old copy first: it costs half the tower's size
                self._entry = (key, half_copy(visual, dtype))
            return self._entry[1]

    def clear(self) -> None:
        with self._lock:
            self._entry = None


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
