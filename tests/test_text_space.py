"""Which CLIP text space a GS encoder embeds into: recorded at training, checked wherever it meets a view model."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ddclip_core import load_model
from ddclip_core.gaussians import GSCLIPEncoder, GSEncoderConfig, load_gs_encoder, save_gs_encoder
from ddclip_core.perception import PerceptionConfig, StartupError, open_perception
from ddclip_core.text_space import (
    PROBE_PROMPTS,
    TextSpaceMismatch,
    check_text_space,
    decode_probe,
    encode_probe,
    text_probe,
)
from ddclip_core.weights import CheckpointError
from tests.conftest import published_tiny


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """The published checkpoint (tiny), the same weights fine-tuned on the image side only (a new
    weights id, CLIP's text tower unchanged) and another CLIP of the same width."""
    folder = tmp_path_factory.mktemp("space")
    published = published_tiny(folder / "published", seed=3)
    tuned = load_model(published, device="cpu")
    with torch.no_grad():
        for parameter in tuned.clip.visual.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    other = published_tiny(folder / "other", seed=5)
    return {"published": published, "tuned": tuned, "other": other}


def gs_encoder_for(model, path) -> str:
    torch.manual_seed(0)
    encoder = GSCLIPEncoder(GSEncoderConfig.tiny(model.embed_dim))
    encoder.text_space = text_probe(model)
    return str(save_gs_encoder(encoder, path))


def test_probe_round_trips_and_bad_probes_are_named():
    probe = np.linalg.qr(np.random.default_rng(0).normal(size=(512, len(PROBE_PROMPTS))))[0].T.astype(np.float32)
    back = decode_probe(encode_probe(probe), "here")
    assert back.shape == probe.shape and np.abs(back - probe).max() < 1e-3
    record = json.loads(encode_probe(probe))
    for broken, problem in [
        ("not json", "unreadable text-space probe"),
        (json.dumps({**record, "version": 9}), "version 9"),
        (json.dumps({**record, "shape": [3, 512]}), "unreadable"),
        (json.dumps({**record, "fp16": "!!"}), "unreadable"),
    ]:
        with pytest.raises(ValueError, match=f"^here: .*{problem}"):
            decode_probe(broken, "here")
    with pytest.raises(ValueError, match="unit vectors"):
        encode_probe(probe * 2)
    with pytest.raises(ValueError, match=f"{len(PROBE_PROMPTS)} rows"):
        encode_probe(probe[:3])


def test_a_fine_tuned_image_side_keeps_the_space_another_clip_does_not(checkpoints):
    published = load_model(checkpoints["published"], device="cpu")
    tuned, other = checkpoints["tuned"], load_model(checkpoints["other"], device="cpu")
    assert tuned.weights_id != published.weights_id  # so weight ids cannot tell
    recorded = text_probe(published)
    assert check_text_space(recorded, tuned, "gs") and check_text_space(recorded, published.set_precision("bf16"), "gs")
    with pytest.raises(TextSpaceMismatch, match="^gs is in another CLIP text space than this model's"):
        check_text_space(recorded, other, "gs")
    assert not check_text_space(None, other, "gs")  # unknown: the caller warns


def test_the_checkpoint_keeps_the_space_and_refuses_a_broken_one(checkpoints, tmp_path):
    model = load_model(checkpoints["published"], device="cpu")
    path = gs_encoder_for(model, tmp_path / "gs.safetensors")
    loaded = load_gs_encoder(path)
    assert np.abs(loaded.text_space - text_probe(model)).max() < 1e-3
    unknown = save_gs_encoder(GSCLIPEncoder(GSEncoderConfig.tiny(32)), tmp_path / "old.st")
    assert load_gs_encoder(unknown).text_space is None
    with safe_open(path, framework="pt") as handle:
        metadata, state = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    save_file(state, str(tmp_path / "broken.st"), metadata={**metadata, "text_space": "{}"})
    with pytest.raises(CheckpointError, match="broken.st: unreadable text-space probe"):
        load_gs_encoder(tmp_path / "broken.st")


def _open(weights, gs_encoder, tmp_path):
    config = PerceptionConfig(weights=str(weights), device="cpu", gs_encoder=gs_encoder, max_views=3,
                              memory_path=str(tmp_path / "memory"))  # fmt: skip
    return open_perception(config)


def test_the_node_refuses_a_gs_encoder_of_another_text_space(checkpoints, tmp_path, caplog):
    gs = gs_encoder_for(load_model(checkpoints["published"], device="cpu"), tmp_path / "gs.safetensors")
    _open(checkpoints["published"], gs, tmp_path).close()
    with pytest.raises(
        StartupError, match="^gs_encoder: the GS encoder gsclip-.* another CLIP text space.* Use the view model"
    ):
        _open(checkpoints["other"], gs, tmp_path / "b")
    old = str(save_gs_encoder(GSCLIPEncoder(GSEncoderConfig.tiny(32)), tmp_path / "old.safetensors"))
    with caplog.at_level(logging.WARNING, logger="ddclip_core.perception.clouds"):
        _open(checkpoints["other"], old, tmp_path / "c").close()
    assert "does not record the CLIP text space" in caplog.text
