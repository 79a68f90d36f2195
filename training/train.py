"""``ddclip train CONFIG [section.key=value ...]``: fine-tune Duoduo CLIP with PyTorch Lightning.

Read top to bottom: data folder -> model -> Lightning module -> trainer -> fit -> export.
Multi-GPU / multi-node: set ``trainer.devices`` / ``trainer.num_nodes`` and launch one process per
node with torchrun or your cluster's launcher; Lightning sets up DDP.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from ddclip_core import load_model, save_export

from .config import TrainConfig
from .data import MultiViewDataset, ViewBatchSampler, collate
from .layout import DataFolder
from .module import DuoduoTraining

log = logging.getLogger(__name__)


class SplitDataModule(pl.LightningDataModule):
    """The train rows and the val rows of known categories of a data folder, and loaders over
    ``self.dataset`` (set by subclasses) whose batch samplers shard by rank themselves."""

    def __init__(self, data: DataFolder, config: TrainConfig, categories: list[str]) -> None:
        super().__init__()
        self.data, self.config = data, config
        self.train_rows = data.rows("train")
        if len(self.train_rows) == 0:
            raise ValueError(f"{data.root}: no objects in the train split")
        known = set(categories)
        self.val_rows = np.array([r for r in data.rows("val") if data.objects[r].category in known], dtype=np.int64)

    def _loader(self, sampler: Sampler) -> DataLoader:
        workers = self.config.data.num_workers
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )

    def _rank(self) -> dict[str, int]:
        trainer = self.trainer
        return {"rank": trainer.global_rank if trainer else 0, "world_size": trainer.world_size if trainer else 1}


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


@dataclass
class TrainResult:
    best: Path | None
    last: Path | None
    export: Path | None
    metrics: dict[str, float]


def _precision(config: TrainConfig) -> str:
    if config.trainer.precision != "auto":
        return config.trainer.precision
    if config.trainer.accelerator == "cpu" or not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def _logger(config: TrainConfig, out: Path):
    kind = config.trainer.logger
    if kind == "tensorboard":
        return pl.loggers.TensorBoardLogger(out, name="logs")
    if kind == "wandb":
        return pl.loggers.WandbLogger(save_dir=out, project="ddclip")
    return pl.loggers.CSVLogger(out, name="logs")


def fit(
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    config: TrainConfig,
    monitor: str | None,
    has_val: bool,
    callbacks: list[pl.Callback] | tuple = (),
) -> tuple[pl.Trainer, Path | None, Path | None]:
    """Fit with the trainer of ``config.trainer``; returns it and the best (``monitor``, max) and last checkpoints."""
    out = Path(config.trainer.out_dir)
    # Two callbacks: Lightning's save_last only refreshes last.ckpt when a monitored one is saved.
    best_checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="max",
        save_top_k=1 if monitor else 0,
        enable_version_counter=False,
    )
    last_checkpoint = pl.callbacks.ModelCheckpoint(
        dirpath=out / "checkpoints", filename="last", save_on_train_epoch_end=True, enable_version_counter=False
    )
    t = config.trainer
    trainer = pl.Trainer(
        default_root_dir=out,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=_precision(config),
        logger=_logger(config, out),
        callbacks=[best_checkpoint, last_checkpoint, pl.callbacks.LearningRateMonitor("step"), *callbacks],
        log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=t.val_every_n_epochs,
        limit_val_batches=t.limit_val_batches if has_val else 0,
        num_sanity_val_steps=0,
        enable_progress_bar=t.progress_bar,
        use_distributed_sampler=False,  # the batch samplers shard by rank themselves
        deterministic=False,
    )
    resume = t.resume
    if resume == "last":
        resume = str(out / "checkpoints" / "last.ckpt")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume or None)
    # From the files, not the callbacks: with ddp_spawn the callbacks ran in the worker processes.
    best, last = out / "checkpoints" / "best.ckpt", out / "checkpoints" / "last.ckpt"
    return trainer, best if monitor and best.is_file() else None, last if last.is_file() else None


def scalar_metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def train(config: TrainConfig, callbacks: list[pl.Callback] | tuple = ()) -> TrainResult:
    """Fit, keep best (val top-1) and last checkpoints, export the best; ``callbacks`` are added to Lightning's."""
    if config.model.kind == "gaussian":  # GS-CLIP: its own data and module, the same trainer
        from .gaussian_train import train_gaussian

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
