"""16-bit inference on a copy of the image tower with 16-bit weights (``_half_weights``): what CUDA runs,
and CPUs without the pre-packed path. Here on the CPU with ``DDCLIP_CPU_PREPACK=0``, which takes the same
code: bit for bit autocast's result with the fp32 weights, and no weight cast on any call."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ddclip_core import load_model
from ddclip_core._half_weights import half_copy
from ddclip_core._prepacked import packing_available
from tests.conftest import published_tiny, random_views


class WeightCasts(TorchDispatchMode):
    """Counts dtype casts whose input is one of ``weights`` (by storage)."""

    def __init__(self, weights):
        super().__init__()
        self.storages, self.count = {w.untyped_storage().data_ptr() for w in weights}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype) and isinstance(args[0], torch.Tensor):
            self.count += args[0].untyped_storage().data_ptr() in self.storages
        return func(*args, **(kwargs or {}))


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLIP_CPU_PREPACK", "0")  # the modules' path: the one CUDA takes
    return load_model(published_tiny(tmp_path), device="cpu")


def autocast_alone(monkeypatch, fn):
    monkeypatch.setenv("DDCLIP_HALF_WEIGHTS", "0")
    try:
        return fn()
    finally:
        monkeypatch.delenv("DDCLIP_HALF_WEIGHTS")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_16_bit_copy_gives_autocasts_bits_and_casts_no_weight(model, monkeypatch, precision):
    model.set_precision(precision)
    batch = [random_views(count, seed=count) for count in (1, 4, 3)]
    tokens_in = list(random_views(3, seed=9))
    pixels = torch.stack([model.preprocessor(list(random_views(2, seed=5)))])

    def run():
        with torch.no_grad():
            tokens = model.view_tokens(tokens_in)
            return [
                model.encode_views(batch),
                tokens,
                model.embed_view_tokens(tokens, [1, 2]),
                model.encode_views(pixels),  # a preprocessed tensor, no autograd
            ]

    weights = [p for p in model.clip.visual.parameters() if p.ndim >= 2]
    with WeightCasts(weights) as casts:
        reference = autocast_alone(monkeypatch, run)
    assert casts.count >= len(weights)  # autocast casts every weight matrix, again on each call
    with WeightCasts(weights) as casts:
        ours = run()
    assert casts.count == len(weights)  # each weight once, into the 16-bit copy
    with WeightCasts(weights) as casts:
        again = run()
    assert casts.count == 0  # and never again
    for a, b, c in zip(ours, again, reference, strict=True):
        assert a.dtype == c.dtype and torch.equal(a, c) and torch.equal(b, c)


def test_the_copy_is_made_once_and_again_after_the_weights_change(model, monkeypatch):
    model.set_precision("bf16")
    views = random_views(3, seed=1)
    first = model.encode_views(views)
    half = model._inference_weights()[1]
    assert half is not model.clip.visual and model._inference_weights()[1] is half
    with torch.no_grad():
        model.clip.visual.proj.mul_(-1.0)  # in place: the same tensor, a new version
    changed = model.encode_views(views)
    assert model._inference_weights()[1] is not half
    torch.testing.assert_close(changed, -first, rtol=0, atol=1e-6)
    assert torch.equal(changed, autocast_alone(monkeypatch, lambda: model.encode_views(views)))
    model.set_precision("fp32")
    assert model._inference_weights()[1] is model.clip.visual  # fp32: the modules themselves
    assert model._half_visual._entry is None  # and the 16-bit copy is no longer held


@pytest.mark.skipif(not packing_available(torch.device("cpu"), "bf16"), reason="no oneDNN bf16 kernels on this CPU")
def test_the_copy_is_dropped_when_the_packed_path_takes_over(model, monkeypatch):
    model.set_precision("bf16").encode_views(random_views(2))
    assert model._half_visual._entry is not None
    monkeypatch.delenv("DDCLIP_CPU_PREPACK")
    model.encode_views(random_views(2))
    assert model._inference_weights()[0] is not None and model._half_visual._entry is None


def test_only_layer_norms_stay_fp32_and_are_shared(model):
    visual = model.clip.visual
    copy = half_copy(visual, torch.bfloat16)
    originals = dict(visual.named_parameters())
    for name, parameter in copy.named_parameters():
        if ".ln_" in name or name.startswith("ln_"):
            assert parameter is originals[name]
        else:
            assert parameter.dtype == torch.bfloat16 and not parameter.requires_grad
            assert torch.equal(parameter, originals[name].detach().to(torch.bfloat16))
    assert originals["proj"].dtype == torch.float32  # the model's own weights are untouched


def test_architectures_autocast_alone_must_run_get_no_copy(model, monkeypatch):
    model.set_precision("bf16")
    monkeypatch.setenv("DDCLIP_HALF_WEIGHTS", "0")
    assert model._inference_weights()[1] is model.clip.visual
    monkeypatch.delenv("DDCLIP_HALF_WEIGHTS")
    model.clip.visual.transformer.resblocks[0].ls_1 = torch.nn.Linear(1, 1)  # stands in for a LayerScale
    assert model._inference_weights()[1] is model.clip.visual
