"""Which embeddings are comparable: the weights id follows the weights, and only the published
checkpoints, as published, share the space of the released Objaverse embeddings."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

from ddclip_core import load_model
from tests.conftest import make_tiny, published_tiny, random_views, write_published_checkpoint

PUBLISHED = "published:Four_1to6F_bs1600_LT6"


def test_the_published_checkpoint_as_published_has_the_release_alias(tmp_path):
    model = load_model(published_tiny(tmp_path), device="cpu")
    assert model.identity.aliases == (PUBLISHED,)
    before = model.weights_id
    model.to(torch.float64).to(torch.float32)  # new tensors, the same values (as a device move)
    assert model.weights_id == before and model.identity.aliases == (PUBLISHED,)


def test_another_threshold_or_another_file_is_not_the_published_model(tmp_path):
    path = published_tiny(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "was trained with layers_threshold=2"
        other = load_model(path, device="cpu", layers_threshold=1)
    assert other.identity.aliases == ()  # before: still the published alias, so the release bank took it
    shutil.copy(path, tmp_path / "best.ckpt")  # a training run's own checkpoint, in the same layout
    assert load_model(tmp_path / "best.ckpt", device="cpu").identity.aliases == ()  # before: "published:best"
    ours = tmp_path / "ours" / "Four_1to6F_bs1600_LT6.ckpt"  # ddclip's own training run, renamed
    ours.parent.mkdir()
    model = load_model(path, device="cpu")
    hyper_parameters = {"ddclip_config": model.config.to_dict(), "train_config": {"data": {}}}  # as training's
    write_published_checkpoint(model, ours, hyper_parameters=hyper_parameters)
    assert load_model(ours, device="cpu").identity.aliases == ()  # before: taken for the published weights


def test_weights_changed_in_place_change_the_id_and_drop_the_alias(tmp_path):
    model = load_model(published_tiny(tmp_path), device="cpu")
    before, loaded = model.weights_id, model.clip.visual.proj.detach().clone()
    optimizer = torch.optim.SGD(model.clip.visual.parameters(), lr=0.1)
    model.clip.visual.proj.grad = torch.ones_like(model.clip.visual.proj)
    optimizer.step()  # fine-tuning in the same process
    assert model.weights_id != before  # before: the old id, so a bank built now claimed the old weights
    assert model.identity.aliases == ()
    with torch.no_grad():
        model.clip.visual.proj.copy_(loaded)  # back to the loaded values
    assert model.weights_id == before and model.identity.aliases == (PUBLISHED,)


def test_the_walk_behind_the_state_keys_finds_what_modules_and_parameters_find():
    # the state keys rest on this walk (a faster modules()): a missed tensor would let kept tokens or
    # packed weights outlive the weights they came from
    from torch import nn

    from ddclip_core.identity import _serial, submodules, weights_state

    shared, tied = nn.Linear(3, 3), nn.Linear(3, 3)
    tied.weight = shared.weight
    tower = nn.Sequential(nn.Linear(2, 3), nn.Sequential(shared, nn.BatchNorm1d(3), shared), tied)
    tower.register_module("skipped", None)
    assert submodules(tower) == list(tower.modules())
    named = {entry[0] for entry in weights_state(tower)}
    assert {_serial(t) for t in (*tower.parameters(), *tower.buffers(), *tower.modules())} == named
    before = weights_state(tower)
    with torch.no_grad():
        tower[1][1].running_mean.add_(1)  # a buffer, in place
    assert weights_state(tower) != before


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_fused_optimizer_step_reaches_the_id_and_every_derived_cache(precision):
    # fused optimizers write the weights without bumping their version counters: before, weights_id,
    # the packed / 16-bit tower and the kept view tokens all served the weights from before the step
    from ddclip_core.view_cache import ViewTokenCache

    views = list(random_views(2, size=64))
    model = make_tiny(seed=3).set_precision(precision)
    model.freeze_for_finetuning()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, fused=True)
    cache = ViewTokenCache(model)
    before_id = model.weights_id
    cache.encode([("obj", [0, 1], views)])
    model.encode_views(views)
    model(model.preprocessor(views).unsqueeze(0)).pow(2).sum().backward()
    optimizer.step()
    fresh = make_tiny(seed=3).set_precision(precision)
    fresh.clip.load_state_dict(model.clip.state_dict())
    want = fresh.encode_views(views)
    assert model.weights_id == fresh.weights_id != before_id
    assert torch.allclose(model.encode_views(views), want, atol=1e-6)
    assert torch.allclose(cache.encode([("obj", [0, 1], views)]), want, atol=1e-6)


def test_a_replaced_activation_or_a_new_hook_is_a_new_model_to_the_caches():
    # the keys covered tensors only: a GELU swapped for QuickGELU (as OpenAI-trained weights need) kept
    # the packed tower's old activation, and tokens kept before a hook were served after it
    from open_clip.transformer import QuickGELU

    from ddclip_core.view_cache import ObjectViews

    views = list(random_views(2, size=64))
    model = make_tiny(seed=3)
    model.encode_views(views)
    for block in model.clip.visual.transformer.resblocks:
        block.mlp.gelu = QuickGELU()
    fresh = make_tiny(seed=3)
    for block in fresh.clip.visual.transformer.resblocks:
        block.mlp.gelu = QuickGELU()
    assert torch.allclose(model.encode_views(views), fresh.encode_views(views), atol=1e-6)

    kept = ObjectViews(model)
    for view in views:
        kept.add(view)
    kept.embedding()
    block = model.clip.visual.transformer.resblocks[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the hook runs on the modules' path, which is the point
        block.mlp.register_forward_hook(lambda module, args, out: out * 2)
        assert torch.allclose(kept.embedding(), model.encode_views(views), atol=1e-5)


def test_a_tensor_keeps_its_serial_for_life_and_a_new_one_at_a_freed_address_gets_another():
    # the key was (address, version): a parameter replaced twice could come back at the first one's
    # address with version 0, and weights_id (and the label sets keyed by it) named the old weights
    from ddclip_core import identity

    first = torch.ones(4)
    state = identity.tensors_state([first])
    assert identity.tensors_state([first]) == state
    held, address = len(identity._serials), id(first)
    del first
    assert len(identity._serials) == held - 1  # freed: its entry goes with it
    kept = []
    for _ in range(10_000):  # CPython hands a freed object's address to a later one, soon
        tensor = torch.ones(4)
        if id(tensor) == address:
            break
        kept.append(tensor)
    assert id(tensor) == address
    assert identity.tensors_state([tensor])[0][0] != state[0][0]
