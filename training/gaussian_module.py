"""The Lightning module for GS-CLIP: the Gaussian encoder against frozen CLIP targets.

Loss: lambda_image * InfoNCE(gs, image target) + lambda_text * InfoNCE(gs, text target), the same
ContrastiveLoss as the multi-view model (GS-CLIP: 0.5 / 0.5, set in configs/gaussian_demo.yaml).
Validation: zero-shot top-1 against the class prompts' CLIP text embeddings, over all objects and
averaged over classes (GS-CLIP's table reports the class average).
Checkpoints keep the encoder config (JSON) in ``hyper_parameters`` so ``encoder_from_checkpoint``
rebuilds the encoder from a Lightning checkpoint with ``weights_only=True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ddclip_core.gaussians import CloudSettings, GSCLIPEncoder, GSEncoderConfig, load_gs_encoder
from ddclip_core.text_space import decode_probe, encode_probe

from .config import GaussianConfig, TrainConfig
from .loss import ContrastiveLoss
from .module import with_logit_scale_and_cosine

PRESETS = ("default", "small", "tiny")


def encoder_config(settings: GaussianConfig, embed_dim: int, cloud: CloudSettings | None = None) -> GSEncoderConfig:
    """The preset's architecture with ``settings.encoder`` overrides, projecting to ``embed_dim``, recording
    ``cloud``: the preprocessing of its training clouds."""
    if settings.preset == "default":
        config = GSEncoderConfig(embed_dim=embed_dim)
    elif settings.preset == "small":  # ~1 M parameters: CPU training on the demo set
        config = GSEncoderConfig(
            embed_dim=embed_dim, npoints=(256, 64), neighbours=(16, 16), sa_widths=((32, 32, 64), (64, 64, 128)),
            global_widths=(128, 256, 512), fusion_groups=32, fusion_group_size=16, fusion_dim=128, fusion_depth=2,
            fusion_heads=4, head_hidden=512,
        )  # fmt: skip
    elif settings.preset == "tiny":
        config = GSEncoderConfig.tiny(embed_dim)
    else:
        raise ValueError(f"gaussian.preset must be one of {PRESETS}, got {settings.preset!r}")
    config = GSEncoderConfig.from_dict({**config.to_dict(), **settings.encoder})
    if cloud is not None:
        config.cloud = cloud
    if config.embed_dim != embed_dim:
        raise ValueError(
            f"gaussian.encoder.embed_dim {config.embed_dim} differs from the targets' dimension {embed_dim}"
        )
    return config


def build_encoder(settings: GaussianConfig, embed_dim: int, cloud: CloudSettings | None = None) -> GSCLIPEncoder:
    """A fresh encoder, or the one in ``settings.init_encoder`` (its architecture wins, its size must fit);
    ``cloud`` (the training data's preprocessing) is recorded in the encoder's config."""
    if settings.init_encoder:
        encoder = load_gs_encoder(settings.init_encoder)
        if encoder.embed_dim != embed_dim:
            raise ValueError(f"{settings.init_encoder}: embeds into {encoder.embed_dim} dims, targets have {embed_dim}")
        if cloud is not None:
            encoder.config.cloud = cloud  # part of the encoder's weights_id, which follows it
        return encoder.train()
    return GSCLIPEncoder(encoder_config(settings, embed_dim, cloud)).train()


class GaussianTraining(pl.LightningModule):
    def __init__(
        self,
        encoder: GSCLIPEncoder,
        config: TrainConfig,
        val_categories: list[str] | None = None,
        class_embeddings: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.encoder, self.config = encoder, config
        self.contrastive_loss = ContrastiveLoss(
            config.loss.lambda_image, config.loss.lambda_text, config.loss.init_logit_scale
        )
        self.val_categories = val_categories or []
        classes = torch.zeros(0) if class_embeddings is None else F.normalize(class_embeddings.float(), dim=-1)
        if len(classes) != len(self.val_categories):
            raise ValueError(f"{len(classes)} class embeddings for {len(self.val_categories)} categories")
        self.register_buffer("class_embeddings", classes, persistent=False)
        count = max(1, len(self.val_categories))
        self.register_buffer("_hits", torch.zeros(count), persistent=False)
        self.register_buffer("_seen", torch.zeros(count), persistent=False)

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.encoder.parameters() if p.requires_grad)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        shape = self.encoder(batch["features"], batch["mask"])
        losses = self.contrastive_loss(shape, batch["image_target"], batch["text_target"])
        size = len(shape)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=size)
        return losses["loss"]

    def on_validation_epoch_start(self) -> None:
        self._hits.zero_()
        self._seen.zero_()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        shape = self.encoder(batch["features"], batch["mask"])
        losses = self.contrastive_loss(shape, batch["image_target"], batch["text_target"])
        self.log("val/loss", losses["loss"], batch_size=len(shape), sync_dist=True)
        if self.class_embeddings.numel() and "label" in batch:
            labels = batch["label"]
            known = labels >= 0
            correct = (F.normalize(shape.float(), dim=-1) @ self.class_embeddings.T).argmax(1) == labels
            self._hits.index_add_(0, labels[known], correct[known].float())
            self._seen.index_add_(0, labels[known], torch.ones_like(labels[known], dtype=torch.float))

    def on_validation_epoch_end(self) -> None:
        if not self.class_embeddings.numel():
            return
        hits, seen = self._hits.clone(), self._seen.clone()
        if self.trainer.world_size > 1:  # fixed-size per-class counts: summed across ranks
            hits, seen = self.all_gather(hits).sum(0), self.all_gather(seen).sum(0)
        present = seen > 0
        if present.any():
            self.log("val/top1", hits.sum() / seen.sum() * 100, prog_bar=True)
            self.log("val/top1_class_mean", (hits[present] / seen[present]).mean() * 100, prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.config.optim
        optimizer = torch.optim.AdamW(self.encoder.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
        return with_logit_scale_and_cosine(optimizer, self.contrastive_loss, self.trainer, optim.min_lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # JSON strings: loadable with weights_only=True, readable without this code.
        checkpoint["hyper_parameters"] = {
            "gs_encoder_config": self.encoder.config.to_json(),
            "train_config": json.dumps(self.config.to_dict()),
        }
        if self.encoder.text_space is not None:
            checkpoint["hyper_parameters"]["text_space"] = encode_probe(self.encoder.text_space)


def encoder_from_checkpoint(path: str | Path) -> GSCLIPEncoder:
    """The trained encoder of a GaussianTraining Lightning checkpoint (eval mode, CPU)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    hyper = state.get("hyper_parameters", {})
    if "gs_encoder_config" not in hyper:
        raise ValueError(f"{path}: not a GS-CLIP training checkpoint (no gs_encoder_config)")
    encoder = GSCLIPEncoder(GSEncoderConfig.from_json(hyper["gs_encoder_config"]))
    prefix = "encoder."
    encoder.load_state_dict({k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)})
    if "text_space" in hyper:
        encoder.text_space = decode_probe(hyper["text_space"], str(path))
    return encoder.eval()
