"""Which embeddings are comparable: the weights id follows the weights, and only the published
checkpoints, as published, share the space of the released Objaverse embeddings."""

from __future__ import annotations

import shutil
import warnings

import torch

from ddclip_core import load_model
from tests.conftest import published_tiny, write_published_checkpoint

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
    # tensors_state keys rest on this walk (a faster modules()): a missed or reordered tensor would let
    # kept tokens or packed weights outlive the weights they came from
    from torch import nn

    from ddclip_core.identity import module_tensors, submodules, weights_state

    shared, tied = nn.Linear(3, 3), nn.Linear(3, 3)
    tied.weight = shared.weight
    tower = nn.Sequential(nn.Linear(2, 3), nn.Sequential(shared, nn.BatchNorm1d(3), shared), tied)
    tower.register_module("skipped", None)
    assert submodules(tower) == list(tower.modules())
    found = [id(t) for t in module_tensors(tower, buffers=False)]
    assert list(dict.fromkeys(found)) == [id(t) for t in tower.parameters()]  # the tied weight twice
    assert {id(t) for t in module_tensors(tower)} == {id(t) for t in (*tower.parameters(), *tower.buffers())}
    before = weights_state(tower)
    with torch.no_grad():
        tower[1][1].running_mean.add_(1)  # a buffer, in place
    assert weights_state(tower) != before
