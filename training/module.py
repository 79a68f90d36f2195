"""The Lightning module: Duoduo CLIP fine-tuning with the contrastive loss, zero-shot validation.

Checkpoints are written in the published layout (``duoduoclip.<open_clip key>`` +
``contrastive_loss.logit_scale``, the model config in ``hyper_parameters``), so
``ddclip_core.load_model`` reads them like the released checkpoint, with ``weights_only=True``.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ddclip_core import DuoduoCLIP, LabelSet, Preprocessor

from .config import TrainConfig
from .loss import ContrastiveLoss

MODEL_PREFIX, PUBLISHED_PREFIX = "model.clip.", "duoduoclip."
TOP_K = (1, 3, 5)


def with_logit_scale_and_cosine(
    optimizer: torch.optim.Optimizer, loss: ContrastiveLoss, trainer: pl.Trainer, min_lr: float
) -> dict[str, Any]:
    """The recipe's optimisation around a model's optimizer: the loss's logit scale joins it without
    weight decay (a temperature is not a weight), and the lr anneals by cosine to ``min_lr`` over all
    steps, stepped every step."""
    optimizer.add_param_group({"params": [loss.logit_scale], "weight_decay": 0.0})
    steps = max(1, int(trainer.estimated_stepping_batches))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=min_lr)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class DuoduoTraining(pl.LightningModule):
    def __init__(self, model: DuoduoCLIP, config: TrainConfig, val_categories: list[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.contrastive_loss = ContrastiveLoss(
            config.loss.lambda_image, config.loss.lambda_text, config.loss.init_logit_scale
        )
        self.trainable = model.freeze_for_finetuning(config.model.layers_threshold)
        model.train()  # load_model hands it over in eval mode
        self.val_categories = val_categories or []
        self.register_buffer("class_embeddings", torch.zeros(0), persistent=False)
        self._augment: Preprocessor | None = None

    # ------------------------------------------------------------------ steps
    def _augmenter(self) -> Preprocessor:
        # The published random crop 208 -> 224, drawn from (seed, step, rank) alone, so a resumed
        # run crops its next step exactly as the uninterrupted run would have.
        if self._augment is None:
            self._augment = Preprocessor(self.model.config.preprocess, crop="random", generator=torch.Generator())
        seed = (self.config.trainer.seed * 1_000_003 + self.global_step) * 1_000 + self.global_rank
        self._augment.generator.manual_seed(seed)
        return self._augment

    def _pixels(self, uint8: torch.Tensor, train: bool) -> torch.Tensor:
        batch, views = uint8.shape[:2]
        flat = uint8.flatten(0, 1).permute(0, 2, 3, 1)  # (B*F, S, S, 3), what the preprocessor takes
        prep = self._augmenter() if train else self.model.preprocessor
        return prep.from_uint8(flat).unflatten(0, (batch, views))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        shape = self.model(self._pixels(batch["pixels"], train=True))
        losses = self.contrastive_loss(shape, batch["image_target"], batch["text_target"])
        batch_size = len(shape)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=batch_size, prog_bar=False
        )
        self.log("train/views", float(batch["pixels"].shape[1]), batch_size=batch_size)
        return losses["loss"]

    def on_validation_epoch_start(self) -> None:
        if self.val_categories and self.class_embeddings.numel() == 0:
            # The text tower is frozen: the class embeddings never change during training.
            labels = LabelSet(self.val_categories, templates=self.config.data.templates)
            self.class_embeddings = torch.tensor(labels.embeddings(self.model, cache=False)).to(self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        shape = self.model(self._pixels(batch["pixels"], train=False))
        losses = self.contrastive_loss(shape, batch["image_target"], batch["text_target"])
        batch_size = len(shape)
        self.log("val/loss", losses["loss"], batch_size=batch_size, sync_dist=True)
        if self.class_embeddings.numel() and "label" in batch:
            scores = F.normalize(shape.float(), dim=-1) @ self.class_embeddings.T
            ranks = (scores > scores.gather(1, batch["label"][:, None])).sum(1)
            for k in TOP_K:
                if k <= len(self.val_categories):
                    top = (ranks < k).float().mean() * 100
                    self.log(f"val/top{k}", top, batch_size=batch_size, sync_dist=True, prog_bar=k == 1)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.config.optim
        optimizer = self.model.configure_optimizer(lr=optim.lr, weight_decay=optim.weight_decay)
        return with_logit_scale_and_cosine(optimizer, self.contrastive_loss, self.trainer, optim.min_lr)

    # ------------------------------------------------------------------ checkpoint layout
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        checkpoint["state_dict"] = {
            (PUBLISHED_PREFIX + key[len(MODEL_PREFIX) :] if key.startswith(MODEL_PREFIX) else key): value
            for key, value in state.items()
        }
        model = self.model
        checkpoint["hyper_parameters"] = {
            "ddclip_config": model.config.to_dict(),
            "train_config": self.config.to_dict(),
            "model": {"network": {"base_name": model.config.arch, "layers_threshold": model.layers_threshold}},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {
            (MODEL_PREFIX + key[len(PUBLISHED_PREFIX) :] if key.startswith(PUBLISHED_PREFIX) else key): value
            for key, value in checkpoint["state_dict"].items()
        }
