"""Shared fixtures: tiny CLIP-shaped models made on the fly (no pretrained weights exist here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddclip_core import DuoduoCLIP, DuoduoConfig

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 64, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_config(layers_threshold: int = 2) -> DuoduoConfig:
    return DuoduoConfig(arch="tiny-test", clip_cfg=TINY_CLIP_CFG, layers_threshold=layers_threshold)


def make_tiny(layers_threshold: int = 2, seed: int = 0) -> DuoduoCLIP:
    torch.manual_seed(seed)
    model = DuoduoCLIP(tiny_config(layers_threshold)).eval()
    _spread_weights(model)
    return model


def _spread_weights(model: DuoduoCLIP) -> None:
    # open_clip initialises LayerNorms to identity and biases to zero; random affine parameters make
    # the tests sensitive to every parameter (a wrong key mapping would otherwise go unnoticed).
    with torch.no_grad():
        for name, param in model.clip.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
                param.add_(0.1 * torch.randn_like(param))


def write_published_checkpoint(
    model: DuoduoCLIP, path: Path, hyper_parameters: dict | None = None, **extra_state
) -> Path:
    """Write ``model`` exactly as the published Lightning checkpoint lays it out."""
    state = {f"duoduoclip.{k}": v.clone() for k, v in model.clip.state_dict().items()}
    state["contrastive_loss.logit_scale"] = torch.tensor(2.6593)
    state.update(extra_state)
    if hyper_parameters is None:
        hyper_parameters = {
            "model": {
                "network": {
                    "lambda_text": 1.0,
                    "lambda_image": 1.0,
                    "layers_threshold": model.layers_threshold,
                    "base_name": model.config.arch,
                    "pretrained_name": "laion2b_s34b_b79k",
                },
                "optimizer": {"_target_": "torch.optim.AdamW", "lr": 5e-05},
            },
            "trainer": {"max_epochs": 80, "precision": "16-mixed", "devices": 4},
            "train_seed": 123,
        }
    torch.save(
        {
            "epoch": 79,
            "global_step": 40000,
            "pytorch-lightning_version": "2.1.0",
            "state_dict": state,
            "hyper_parameters": hyper_parameters,
            "loops": {},
            "callbacks": {},
            "optimizer_states": [],
            "lr_schedulers": [],
        },
        path,
    )
    return path


def random_views(count: int, size: int = 224, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


@pytest.fixture
def tiny_model() -> DuoduoCLIP:
    return make_tiny()


@pytest.fixture(scope="session")
def vit_b32() -> DuoduoCLIP:
    """A randomly initialised ViT-B-32 Duoduo CLIP (the real architecture), built once per run."""
    torch.manual_seed(0)
    model = DuoduoCLIP(DuoduoConfig.from_arch("ViT-B-32", 6)).eval()
    _spread_weights(model)
    return model


def write_objaverse_release(folder: Path, vectors: np.ndarray, uids: list[str]) -> tuple[Path, Path]:
    """The released Objaverse embeddings' layout: ``shape_emb_objaverse.h5`` (dataset ``shape_feat``, float16
    as released, not normalised) and ``shape_emb_objaverse_model_to_idx.json`` (uid -> row, rows shuffled)."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    h5, uid_map = folder / "shape_emb_objaverse.h5", folder / "shape_emb_objaverse_model_to_idx.json"
    order = np.random.default_rng(7).permutation(len(uids))  # row i holds uids[order[i]]
    with h5py.File(h5, "w") as handle:
        handle.create_dataset("shape_feat", data=(np.asarray(vectors)[order] * 2.5).astype(np.float16))
    uid_map.write_text(json.dumps({uids[j]: int(i) for i, j in enumerate(order)}))
    return h5, uid_map


def published_tiny(folder: Path, seed: int = 3) -> Path:
    """A tiny model written as the published Lightning checkpoint, under the published file name."""
    model = make_tiny(seed=seed)
    path = folder / "Four_1to6F_bs1600_LT6.ckpt"
    folder.mkdir(parents=True, exist_ok=True)
    return write_published_checkpoint(model, path, {"ddclip_config": model.config.to_dict()})
