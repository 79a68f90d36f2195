"""``benchmarks/_kernels.py``: the encoder benchmark's time inside the library kernels must count every
kernel where the encoder's FLOPs are. A profiler name that no longer matches would silently leave one
out (attention was left out that way once) and make the kernels look closer to the floor than they are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ddclip_core._prepacked import packing_available
from tests.conftest import random_views

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
try:
    from _kernels import KernelClock
finally:  # the benchmarks' module names (bank, memory, node, ...) must not shadow anything for other tests
    sys.path.pop(0)


@pytest.mark.skipif(not packing_available(torch.device("cpu"), "fp32"), reason="PyTorch built without oneDNN")
def test_the_clock_counts_the_encoders_matmuls_and_attention(tiny_model):
    tiny_model.set_precision("fp32")
    views = [random_views(3, seed=1), random_views(2, seed=2)]
    with torch.inference_mode():
        clock = KernelClock(lambda: tiny_model.encode_views(views))
        clock()
        clock()
    assert {"mkldnn::_linear_pointwise", "aten::_scaled_dot_product_flash_attention_for_cpu"} <= clock.kernels
    assert len(clock.seconds) == 2 and all(s > 0 for s in clock.seconds)
    assert clock.median() == clock.seconds[1]  # the first call is the warm-up
    gemm, attention = clock.median(part="gemm"), clock.median(part="attention")
    assert gemm > 0 and attention > 0 and gemm + attention == pytest.approx(clock.median())


def test_the_clock_counts_nothing_outside_the_kernels():
    x = torch.randn(256, 256)
    clock = KernelClock(lambda: torch.nn.functional.layer_norm(x + x, (256,)).relu())
    clock()
    assert clock.kernels == set() and clock.seconds == [0.0]
    matmul = KernelClock(lambda: x @ x)
    matmul()
    assert matmul.kernels == {"aten::mm"} and matmul.seconds[0] > 0
    assert matmul.attention_seconds == [0.0] and matmul.gemm_seconds == matmul.seconds
