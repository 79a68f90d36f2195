"""``ddclip train CONFIG [section.key=value ...]``: fine-tune Duoduo CLIP with PyTorch Lightning.

Read top to bottom: data folder -> model -> Lightning module -> trainer -> fit -> export.
Multi-GPU / multi-node: set ``trainer.devices`` / ``trainer.num_nodes`` and launch one process per
node with torchrun or your cluster's launcher; Lightning sets up DDP.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from ddclip_core import load_model, save_export

from .config import TrainConfig
from .data import MultiViewDataset, ViewBatchSampler
from .fitting import SplitDataModule, TrainResult, fit, scalar_metrics
from .gaussian_train import train_gaussian
from .layout import DataFolder
from .module import DuoduoTraining

log = logging.getLogger(__name__)


class MultiViewData(SplitDataModule):
    def __init__(self, data: DataFolder, config: TrainConfig, categories: list[str]) -> None:
        super().__init__(data, config, categories)
        self.dataset = MultiViewDataset(data, categories)

    def train_dataloader(self) -> DataLoader:
        d = self.config.data
        sampler = ViewBatchSampler(
            self.train_rows,
            d.batch_size,
            min_views=d.min_views,
            max_views=d.max_views,
            total_views=self.data.num_views,
            seed=self.config.trainer.seed,
            **self._rank(),
        )
        return self._loader(sampler)

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_rows) == 0:
            return []
        d = self.config.data
        views = min(d.val_views, self.data.num_views)
        sampler = ViewBatchSampler(
            self.val_rows,
            d.val_batch_size or d.batch_size,
            min_views=views,
            max_views=views,
            total_views=self.data.num_views,
            seed=self.config.trainer.seed + 1,
            shuffle=False,
            drop_last=False,
            **self._rank(),
        )
        return self._loader(sampler)


def train(config: TrainConfig, callbacks: list[pl.Callback] | tuple = ()) -> TrainResult:
    """Fit, keep best (val top-1) and last checkpoints, export the best; ``callbacks`` are added to Lightning's."""
    if config.model.kind == "gaussian":  # GS-CLIP: its own data and module, the same trainer
        return train_gaussian(config, callbacks)
    pl.seed_everything(config.trainer.seed, workers=True)
    out = Path(config.trainer.out_dir)
    data = DataFolder(config.data.root)
    categories = data.categories(data.rows("val"))
    model = load_model(
        config.model.init_weights or None,
        device="cpu",
        arch=config.model.arch,
        layers_threshold=config.model.layers_threshold,
    )
    module = DuoduoTraining(model, config, categories)
    log.info("trainable parameters: %d (attention of blocks >= %d)", module.trainable, model.layers_threshold)
    datamodule = MultiViewData(data, config, categories)
    has_val = len(datamodule.val_rows) > 0
    monitor = "val/top1" if has_val and categories else None
    trainer, best, last = fit(module, datamodule, config, monitor, has_val, callbacks)
    export = None
    if trainer.is_global_zero and (best or last):
        export = save_export(load_model(best or last, device="cpu"), out / "export")
        log.info("exported %s to %s", (best or last).name, export)
    return TrainResult(best, last, export, scalar_metrics(trainer))
