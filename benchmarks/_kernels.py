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
GEMM_KERNELS = {"aten::mm", "aten::addmm", "mkldnn::_linear_pointwise"}
# attention: PyTorch's fused kernel, or two batched matmuls and a softmax (16 bit without AMX)
ATTENTION_KERNELS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_softmax",
}
HEAVY_KERNELS = GEMM_KERNELS | ATTENTION_KERNELS


class KernelClock:
    """Each call runs ``fn`` once under the profiler and records the seconds spent in the heavy kernels."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.seconds: list[float] = []
        self.gemm_seconds: list[float] = []
        self.attention_seconds: list[float] = []
        self.kernels: set[str] = set()  # the heavy kernels seen

    def __call__(self) -> None:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            self.fn()
        heavy = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages() if e.key in HEAVY_KERNELS}
        self.kernels.update(heavy)
        self.gemm_seconds.append(sum(t for k, t in heavy.items() if k in GEMM_KERNELS))
        self.attention_seconds.append(sum(t for k, t in heavy.items() if k in ATTENTION_KERNELS))
        self.seconds.append(self.gemm_seconds[-1] + self.attention_seconds[-1])

    def median(self, skip: int = 1, part: str = "all") -> float:
        """Median of the recorded times after the first ``skip`` (warm-up) calls: of all heavy kernels,
        or of one ``part``, "gemm" or "attention"."""
        times = {"all": self.seconds, "gemm": self.gemm_seconds, "attention": self.attention_seconds}[part]
        return statistics.median(times[skip:] or times)
