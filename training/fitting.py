"""What both trainings share (Duoduo CLIP and GS-CLIP): the split data module, the Lightning trainer
with its best/last checkpoints, and the result. ``train.py`` and ``gaussian_train.py`` build on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from ddclip_core.precision import candidates

from .config import TrainConfig
from .data import collate
from .layout import DataFolder


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
    # native bf16 only (Ampere on): is_bf16_supported() also says yes where it is emulated (V100, T4,
    # Jetson Xavier), which trains far slower than fp16 there (never run here: no GPU)
    return "bf16-mixed" if "bf16" in candidates(torch.device("cuda", torch.cuda.current_device())) else "16-mixed"


def _logger(config: TrainConfig, out: Path):
    kind = config.trainer.logger
    if kind == "tensorboard":
        return pl.loggers.TensorBoardLogger(out, name="logs")
    if kind == "wandb":
        return pl.loggers.WandbLogger(save_dir=out, project="ddclip")
    return pl.loggers.CSVLogger(out, name="logs")


class SamplerEpoch(pl.Callback):
    """Tells the training batch sampler which epoch starts. Lightning calls ``set_epoch`` only on a
    loader's sampler (or its batch sampler's ``.sampler``), not on a batch sampler itself: without this,
    every epoch drew the same objects, view counts, views and captions."""

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(trainer.current_epoch)


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
        callbacks=[
            best_checkpoint,
            last_checkpoint,
            pl.callbacks.LearningRateMonitor("step"),
            SamplerEpoch(),
            *callbacks,
        ],
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
