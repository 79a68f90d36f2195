"""``ddclip train`` with ``model.kind: gaussian``: GS-CLIP from gaussians.h5 and the frozen CLIP targets.

data folder (+ gaussians.h5) -> frozen CLIP's class embeddings -> encoder -> Lightning module ->
the shared trainer (``train.fit``) -> export with ``save_gs_encoder`` (OUT/export/gs_encoder.safetensors).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ddclip_core import LabelSet, load_model
from ddclip_core.gaussians import save_gs_encoder
from ddclip_core.text_space import check_text_space

from .config import TrainConfig
from .fitting import SplitDataModule, TrainResult, fit, scalar_metrics
from .gaussian_dataset import GaussianBatchSampler, GaussianDataset, class_ids
from .gaussian_module import GaussianTraining, build_encoder, encoder_from_checkpoint
from .layout import TEXT_TARGETS, DataFolder, read_text_space

log = logging.getLogger(__name__)

EXPORT_NAME = "gs_encoder.safetensors"


class GaussianData(SplitDataModule):
    def __init__(self, data: DataFolder, config: TrainConfig, categories: list[str]) -> None:
        super().__init__(data, config, categories)
        self.dataset = GaussianDataset(data, categories, config.gaussian.points, config.gaussian.partial_fraction)

    def train_dataloader(self) -> DataLoader:
        balanced = self.config.gaussian.balanced
        classes = class_ids(self.data, self.train_rows) if balanced else None
        sampler = GaussianBatchSampler(self.train_rows, self.config.data.batch_size, classes=classes,
                                       seed=self.config.trainer.seed, **self._rank())  # fmt: skip
        return self._loader(sampler)

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_rows) == 0:
            return []
        d, seed = self.config.data, self.config.trainer.seed + 1
        sampler = GaussianBatchSampler(self.val_rows, d.val_batch_size or d.batch_size, seed=seed, shuffle=False,
                                       drop_last=False, **self._rank())  # fmt: skip
        return self._loader(sampler)


def class_embeddings(config: TrainConfig, categories: list[str], text_space: np.ndarray | None) -> torch.Tensor | None:
    """CLIP text embeddings of the validation classes, from the frozen CLIP named by model.init_weights,
    which must be the text tower that made the targets (``text_space``, their probe) when they say."""
    if not categories:
        return None
    clip = load_model(config.model.init_weights or None, device="cpu", arch=config.model.arch)
    weights = config.model.init_weights or "random"
    advice = f"model.init_weights ({weights}) scores the validation classes: name the CLIP that made the targets."
    if not check_text_space(text_space, clip, f"{TEXT_TARGETS} (the targets)", advice):
        log.warning("%s does not record its CLIP text space (made before ddclip kept it): cannot check that "
                    "model.init_weights has the text tower that made it", TEXT_TARGETS)  # fmt: skip
    return torch.tensor(LabelSet(categories, templates=config.data.templates).embeddings(clip, cache=False))


def train_gaussian(config: TrainConfig, callbacks: list[pl.Callback] | tuple = ()) -> TrainResult:
    """Fit GS-CLIP; keep best (val top-1 averaged over classes) and last checkpoints; export the best."""
    pl.seed_everything(config.trainer.seed, workers=True)
    out = Path(config.trainer.out_dir)
    data = DataFolder(config.data.root)
    categories = data.categories(data.rows("val"))
    datamodule = GaussianData(data, config, categories)
    encoder = build_encoder(config.gaussian, datamodule.dataset.targets.embed_dim, datamodule.dataset.cloud_settings())
    encoder.text_space = read_text_space(data.path(TEXT_TARGETS))  # the space it learns: its checkpoints carry it
    module = GaussianTraining(encoder, config, categories, class_embeddings(config, categories, encoder.text_space))
    log.info("GS encoder: %d trainable parameters", module.trainable)
    has_val = len(datamodule.val_rows) > 0
    monitor = "val/top1_class_mean" if has_val and categories else None
    trainer, best, last = fit(module, datamodule, config, monitor, has_val, callbacks)
    export = None
    if trainer.is_global_zero and (best or last):
        export = save_gs_encoder(encoder_from_checkpoint(best or last), out / "export" / EXPORT_NAME)
        log.info("exported %s to %s", (best or last).name, export)
    return TrainResult(best, last, export, scalar_metrics(trainer))
