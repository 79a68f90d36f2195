"""How much of a forward pass is the library kernels: the part no change above them can make faster.

``KernelClock`` runs a function under torch's profiler and keeps the time spent inside the heavy kernels
(oneDNN / MKL GEMMs, PyTorch's fused attention, softmax: where the FLOPs are), measured in place, with
the caches and memory as the encoder leaves them. Its ratio to the FLOP floor is how far the kernels
themselves are from the machine's best dense matmul rate for this network's shapes; the rest of the
encoder's time (norms, adds, copies, casts, Python) is the part above them. (Replaying the recorded
kernel calls alone was tried first: their inputs are then cold in cache, which made small-row bf16
kernels up to 1.4x slower than in place.)
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # the profiler's own start/stop lines would fill the table

# Profiler names of the leaf kernels (composite ops such as linear or scaled_dot_product_attention call
# these; their own self time is bookkeeping).
HEAVY_KERNELS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_softmax",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "mkldnn::_linear_pointwise",
}


class KernelClock:
    """Each call runs ``fn`` once under the profiler and records the seconds spent in the heavy kernels."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.seconds: list[float] = []
        self.kernels: set[str] = set()  # the heavy kernels seen

    def __call__(self) -> None:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            self.fn()
        heavy = [e for e in prof.key_averages() if e.key in HEAVY_KERNELS]
        self.kernels.update(e.key for e in heavy)
        self.seconds.append(sum(e.self_cpu_time_total for e in heavy) / 1e6)

    def median(self, skip: int = 1) -> float:
        """Median of the recorded times after the first ``skip`` (warm-up) calls."""
        return statistics.median(self.seconds[skip:] or self.seconds)
