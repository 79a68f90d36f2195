"""The training configuration: YAML files and overrides, their errors, and what precision auto trains in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.config import TrainConfig


def test_config_yaml_overrides_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  batch_size: 32\noptim:\n  lr: 1.0e-4\n")
    config = TrainConfig.load(path, ["data.max_views=4", "optim.min_lr=1e-8", "trainer.devices=4"])
    assert (config.data.batch_size, config.data.max_views, config.optim.lr) == (32, 4, 1e-4)
    assert config.optim.min_lr == 1e-8 and config.trainer.devices == 4
    with pytest.raises(ValueError, match="unknown config key 'data.batchsize'"):
        TrainConfig.load(path, ["data.batchsize=3"])
    with pytest.raises(ValueError, match="data.batch_size must be int"):
        TrainConfig.load(path, ["data.batch_size=big"])
    with pytest.raises(ValueError, match="min_views"):
        TrainConfig.load(path, ["data.min_views=5", "data.max_views=2"])
    for shipped in Path("training/configs").glob("*.yaml"):
        TrainConfig.load(shipped)


def test_auto_precision_trains_in_bf16_only_where_the_gpu_has_it(monkeypatch):
    """torch.cuda.is_bf16_supported() says yes on GPUs that emulate bf16 (V100, T4, Jetson Xavier), where
    bf16-mixed trains far slower than 16-mixed: the compute capability decides (GPUs simulated here)."""
    from training.fitting import _precision

    config = TrainConfig()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    for capability, expected in (
        ((7, 0), "16-mixed"),
        ((7, 5), "16-mixed"),
        ((8, 0), "bf16-mixed"),
        ((9, 0), "bf16-mixed"),
    ):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert _precision(config) == expected, capability
    config.trainer.accelerator = "cpu"
    assert _precision(config) == "32-true"
    config.trainer.precision = "16-mixed"
    assert _precision(config) == "16-mixed"
