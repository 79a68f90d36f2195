"""The CUDA paths, where a GPU is present (skipped elsewhere: no GPU where this was written, so these have
never run here). ``scripts/gpu_check.sh encoder`` runs them, with the GPU benchmarks, in one call on a lent machine.

Each compares CUDA with what the CPU tests establish: fp32 embeddings equal the CPU's (TF32 off), the 16-bit
copy of the tower gives autocast's bits and casts no weight, mixed view counts and the view cache give what
one object alone gives, and ``precision="auto"`` keeps a 16-bit type only at parity with fp32.
"""

from __future__ import annotations

import pytest
import torch

from ddclip_core import load_model
from ddclip_core.view_cache import ViewTokenCache
from tests.conftest import published_tiny, random_views
from tests.test_half_weights import WeightCasts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none where this was written)")


@pytest.fixture
def checkpoint(tmp_path):
    return published_tiny(tmp_path)


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 on the GPU as on the CPU: TF32 matmuls and convolutions round to 10 bits."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def test_fp32_on_cuda_equals_the_cpu_on_mixed_view_counts(checkpoint):
    cpu, gpu = load_model(checkpoint, device="cpu"), load_model(checkpoint, device="cuda")
    batch = [random_views(count, seed=count) for count in (1, 5, 12, 3)]
    on_gpu = gpu.encode_views(batch)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), cpu.encode_views(batch), rtol=0, atol=1e-5)
    alone = torch.cat([gpu.encode_views(views) for views in batch])
    torch.testing.assert_close(on_gpu, alone, rtol=0, atol=1e-5)
    views = batch[2]
    torch.testing.assert_close(gpu.encode_views(views[::-1].copy()), gpu.encode_views(views), rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_16_bit_copy_on_cuda_gives_autocasts_bits_and_casts_no_weight(checkpoint, monkeypatch, precision):
    if precision == "bf16" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bf16 is emulated before compute capability 8")
    model = load_model(checkpoint, device="cuda").set_precision(precision)
    batch = [random_views(count, seed=count) for count in (1, 4, 3)]
    model.encode_views(batch)  # makes the copy
    weights = [p for p in model.clip.visual.parameters() if p.ndim >= 2]
    with WeightCasts(weights) as casts:
        ours = model.encode_views(batch)
    assert casts.count == 0
    monkeypatch.setenv("DDCLIP_HALF_WEIGHTS", "0")
    with WeightCasts(weights) as casts:
        reference = model.encode_views(batch)
    assert casts.count >= len(weights)
    assert torch.equal(ours, reference)


def test_the_view_cache_on_cuda_equals_a_full_encode(checkpoint):
    model = load_model(checkpoint, device="cuda")
    views = list(random_views(6, seed=7))
    cache = ViewTokenCache(model, storage="fp32")
    cache.encode([("a", [0, 1, 2], views[:3])])
    again = cache.encode([("a", [0, 1, 2, 3, 4, 5], views), ("b", [0], views[:1])])
    assert cache.stats.hits == 3 and cache.stats.misses == 7
    torch.testing.assert_close(again.cpu(), model.encode_views([views, views[:1]]).cpu(), rtol=0, atol=1e-5)


def test_auto_keeps_a_16_bit_type_only_at_parity(checkpoint):
    model = load_model(checkpoint, device="cuda", precision="auto")
    assert model.precision in ("fp32", "bf16", "fp16")
    assert torch.cuda.get_device_name() in model.precision_reason
    views = random_views(6, seed=11)
    chosen = model.encode_views(views)
    reference = model.set_precision("fp32").encode_views(views)
    assert (chosen * reference).sum().item() >= 0.999
