"""Faithfulness of the multi-view forward pass to the published Duoduo CLIP architecture."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ddclip_core import DuoduoCLIP, DuoduoConfig
from tests.conftest import make_tiny, random_views


def _block_inputs(model: DuoduoCLIP, views: np.ndarray) -> list[torch.Tensor]:
    """Hidden states after each block's attention (the input of its ln_2), packed (N, L, D)."""
    captured: list[torch.Tensor] = []
    hooks = [
        block.ln_2.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach().clone()))
        for block in model.clip.visual.transformer.resblocks
    ]
    try:
        model.encode_views(views)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def test_blocks_below_threshold_attend_within_a_view_above_across_all_views():
    model = make_tiny(layers_threshold=2)
    views = random_views(3)
    changed = views.copy()
    changed[2, :32, :32] = 255 - changed[2, :32, :32]  # one patch of view 2 only
    before, after = _block_inputs(model, views), _block_inputs(model, changed)
    for index in range(model.num_blocks):
        view0_delta = (before[index][0] - after[index][0]).abs().amax(dim=-1)  # per token of view 0
        if index < model.layers_threshold:
            assert torch.equal(before[index][0], after[index][0]), f"block {index} saw another view"
        else:
            assert (view0_delta > 1e-6).all(), f"block {index}: not every token of view 0 sees view 2"


def test_no_cross_view_blocks_equals_mean_of_plain_open_clip(vit_b32):
    model = copy.deepcopy(vit_b32)
    model.config.layers_threshold = model.num_blocks
    views = random_views(4, seed=1)
    pixels = model.preprocessor(list(views))
    with torch.no_grad():
        plain = model.clip.encode_image(pixels).mean(dim=0, keepdim=True)
        ours = model.encode_views(pixels[None], normalize=False)
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-5)


def test_single_view_equals_plain_clip_at_any_threshold():
    model = make_tiny(layers_threshold=0)
    view = random_views(1, seed=2)
    pixels = model.preprocessor(list(view))
    with torch.no_grad():
        plain = F.normalize(model.clip.encode_image(pixels), dim=-1)
    torch.testing.assert_close(model.encode_views(view[0]), plain, rtol=1e-4, atol=1e-5)


def test_cross_view_attention_changes_the_embedding():
    views = random_views(3, seed=3)
    mixed, plain = make_tiny(layers_threshold=2, seed=4), make_tiny(layers_threshold=4, seed=4)
    assert (mixed.encode_views(views) - plain.encode_views(views)).abs().max() > 1e-3


@pytest.mark.parametrize("threshold", [0, 2, 4])
def test_permutation_invariance(threshold):
    model = make_tiny(layers_threshold=threshold)
    views = random_views(5, seed=5)
    base = model.encode_views(views)
    for order in ([4, 3, 2, 1, 0], [1, 3, 0, 4, 2]):
        torch.testing.assert_close(model.encode_views(views[order]), base, rtol=1e-4, atol=1e-5)


def test_objects_with_different_view_counts_in_one_pass_equal_each_alone(tiny_model):
    objects = [random_views(n, seed=10 + i) for i, n in enumerate((2, 1, 3, 2, 5, 1))]  # equal counts apart
    calls = []
    hook = tiny_model.clip.visual.conv1.register_forward_hook(lambda *_: calls.append(1))
    batched = tiny_model.encode_views(objects)
    hook.remove()
    assert len(calls) == 1, "all objects must go through one forward pass"
    alone = torch.cat([tiny_model.encode_views(obj) for obj in objects])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_a_batch_of_mixed_view_counts_does_the_work_of_its_objects_alone(tiny_model, monkeypatch):
    """Nothing runs on padding: not the projections (FLOPs), not attention (query x key pairs)."""
    monkeypatch.setenv("DDCLIP_CPU_PREPACK", "0")  # the modules; the packed path shares the grouping
    pairs = []
    sdpa = F.scaled_dot_product_attention

    def counted(q, k, v, **options):
        pairs.append(q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2])
        return sdpa(q, k, v, **options)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    counts = [1, 5, 3, 3]
    pixels = torch.randn(len(counts), 5, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    mask = torch.arange(5)[None, :] < torch.tensor(counts)[:, None]

    def work(pixels, mask=None):
        pairs.clear()
        with FlopCounterMode(display=False) as flops, torch.inference_mode():
            tiny_model(pixels, mask)
        return flops.get_total_flops(), sum(pairs)

    batched = work(pixels, mask)
    alone = [work(pixels[i : i + 1, :count]) for i, count in enumerate(counts)]
    assert batched == tuple(map(sum, zip(*alone, strict=True)))


def test_padded_tensor_batch_with_view_mask_equals_unpadded(tiny_model):
    objects = [random_views(n, seed=20 + n) for n in (2, 4, 1)]
    prepared = [tiny_model.preprocessor(list(obj)) for obj in objects]
    padded = torch.randn(3, 4, 3, 224, 224)  # garbage in padding must not matter
    mask = torch.zeros(3, 4, dtype=torch.bool)
    for i, pixels in enumerate(prepared):
        padded[i, : len(pixels)] = pixels
        mask[i, : len(pixels)] = True
    with torch.no_grad():
        batched = tiny_model.encode_views(padded, view_mask=mask)
        alone = torch.cat([tiny_model.encode_views(p[None]) for p in prepared])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_mask_need_not_be_left_aligned(tiny_model):
    pixels = tiny_model.preprocessor(list(random_views(3, seed=30)))
    padded = torch.randn(1, 5, 3, 224, 224)
    padded[0, [0, 2, 4]] = pixels
    mask = torch.tensor([[True, False, True, False, True]])
    with torch.no_grad():
        torch.testing.assert_close(
            tiny_model.encode_views(padded, view_mask=mask), tiny_model.encode_views(pixels[None]), rtol=1e-4, atol=1e-5
        )


def test_embeddings_are_unit_length_and_unnormalised_on_request(tiny_model):
    views = random_views(2)
    assert torch.allclose(tiny_model.encode_views(views).norm(dim=-1), torch.ones(1))
    raw = tiny_model.encode_views(views, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(1))
    assert tiny_model.encode_text("a chair", normalize=False).shape == (1, 32)


def test_tensor_path_keeps_autograd_for_training(tiny_model):
    tiny_model.freeze_for_finetuning()
    pixels = tiny_model.preprocessor(list(random_views(2)))[None]
    tiny_model.encode_views(pixels).sum().backward()
    trainable = dict(tiny_model.trainable_parameters())
    for name, param in tiny_model.named_parameters():
        assert (param.grad is not None) == (name in trainable), name


def test_text_matches_open_clip(tiny_model):
    texts = ["a white couch", "a red mug on a table"]
    tokens = tiny_model.tokenizer(texts)
    with torch.no_grad():
        reference = F.normalize(tiny_model.clip.encode_text(tokens), dim=-1)
    torch.testing.assert_close(tiny_model.encode_text(texts), reference)


def test_trainable_parameters_are_the_upper_attention_blocks(vit_b32):
    count = sum(p.numel() for _, p in vit_b32.trainable_parameters())
    assert count == 14_174_208  # 6 blocks x (in_proj 768x2304+2304, out_proj 768x768+768): 14.2 M
    names = {n for n, _ in vit_b32.trainable_parameters()}
    assert names == {
        f"clip.visual.transformer.resblocks.{i}.attn.{p}"
        for i in range(6, 12)
        for p in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    }
    assert sum(p.numel() for _, p in vit_b32.trainable_parameters(layers_threshold=0)) == 2 * count


def test_freeze_for_finetuning_sets_requires_grad(tiny_model):
    count = tiny_model.freeze_for_finetuning()
    assert count == sum(p.numel() for p in tiny_model.parameters() if p.requires_grad)
    optimizer = tiny_model.configure_optimizer()
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == count
    assert optimizer.defaults["lr"] == 5e-5


def test_bf16_autocast_close_to_fp32(tiny_model):
    views = random_views(3, seed=40)
    full = tiny_model.encode_views(views)
    half = tiny_model.set_precision("bf16").encode_views(views)
    assert half.dtype == torch.float32
    assert F.cosine_similarity(full, half).item() > 0.99


def test_config_json_round_trip_and_validation():
    config = DuoduoConfig.from_arch("ViT-B-32", 6)
    assert DuoduoConfig.from_json(config.to_json()) == config
    assert config.num_blocks == 12 and config.embed_dim == 512
    with pytest.raises(ValueError, match="layers_threshold must be in 0..12"):
        DuoduoConfig.from_arch("ViT-B-32", 13)
    with pytest.raises(ValueError, match="unknown architecture"):
        DuoduoConfig.from_arch("ViT-Q-99")
    with pytest.raises(ValueError, match="plain ViT"):
        DuoduoConfig.from_arch("RN50")


def test_the_forward_compiles_as_one_graph_with_frozen_weights():
    """torch.compile (inductor, freezing: what a user with fixed-size inputs reaches for) takes the whole
    multi-view forward as one graph; a data-dependent op in the view grouping used to break it."""
    import torch._inductor.config as inductor

    model = make_tiny()
    pixels = torch.randn(2, 3, 3, 224, 224)
    with inductor.patch(freezing=True), torch.inference_mode():
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        torch.testing.assert_close(compiled(pixels), model(pixels), rtol=1e-4, atol=1e-5)


def test_hooks_run_or_are_warned_about_and_odd_inputs_are_taken_or_named(tiny_model):
    views = random_views(3, size=64, seed=12)
    expected = tiny_model.encode_views(views)
    text = tiny_model.encode_text("a red mug")
    handle = tiny_model.clip.ln_final.register_forward_hook(lambda module, args, out: out * 0 + 1)
    try:  # before: the packed text tower ran ln_final as a function and the hook never ran
        assert not torch.allclose(tiny_model.encode_text("a red mug"), text)
    finally:
        handle.remove()
    handle = tiny_model.clip.visual.transformer.resblocks[0].attn.register_forward_hook(lambda *a: None)
    try:
        with pytest.warns(UserWarning, match=r"forward hooks on resblocks\[0\].attn do not run"):
            torch.testing.assert_close(tiny_model.encode_views(views), expected, atol=1e-5, rtol=0)
    finally:
        handle.remove()

    pixels = tiny_model.preprocessor(list(views))[None]
    mask = [[True, True, False]]  # a list, as view_counts takes: before, 'list' has no attribute 'to'
    for dtype in (torch.float64, torch.float16):  # before: refused with autograd on, taken without
        torch.testing.assert_close(
            tiny_model.encode_views(pixels.to(dtype), view_mask=mask),
            tiny_model.encode_views(views[:2]),
            atol=1e-2 if dtype == torch.float16 else 1e-5,
            rtol=0,
        )
    half = make_tiny().half()
    for call in (lambda: half.encode_views(views), lambda: half.encode_text("a mug")):
        with pytest.raises(ValueError, match=r"weights are torch.float16: keep them float32 .* set_precision"):
            call()
