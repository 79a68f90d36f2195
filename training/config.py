"""One typed, documented config per experiment: a YAML file plus ``section.key=value`` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ddclip_core.text_files import read_text

from .loss import INIT_LOGIT_SCALE


@dataclass
class DataConfig:
    root: str = ""  # data folder in the published layout with targets (`ddclip data targets`)
    batch_size: int = 400  # objects per device and step (published: 400 x 4 GPUs)
    min_views: int = 1  # views per object are drawn uniformly in [min_views, max_views] per batch
    max_views: int = 6
    num_workers: int = 8  # data loader processes per device
    val_views: int = 6  # views per object in validation (fixed draw, same every epoch)
    val_batch_size: int = 0  # 0: same as batch_size
    templates: str = "openai"  # prompt templates for the zero-shot class embeddings of validation


@dataclass
class ModelConfig:
    kind: str = "duoduo"  # duoduo: fine-tune the multi-view encoder | gaussian: train GS-CLIP (section gaussian)
    arch: str = "ViT-B-32"  # open_clip architecture
    # OpenCLIP .bin/.safetensors, ddclip export or published .ckpt; "": random. For kind gaussian: the
    # frozen CLIP that made the targets; its text tower embeds the class prompts of zero-shot validation.
    init_weights: str = ""
    layers_threshold: int = 6  # first block with cross-view attention; only attention of blocks >= it trains


@dataclass
class GaussianConfig:
    """GS-CLIP training (model.kind: gaussian); the Gaussians come from `ddclip data gaussians`."""

    preset: str = "default"  # encoder size: default | small | tiny (training/gaussian_module.py)
    encoder: dict = field(default_factory=dict)  # GSEncoderConfig fields overriding the preset
    init_encoder: str = ""  # a save_gs_encoder .safetensors file to start from; "": random
    points: int = 0  # Gaussians per object and step, a fresh random subset each time; 0: all stored
    balanced: bool = True  # draw classes uniformly, then an object of the class (GS-CLIP's data balance)
    partial_fraction: float = 0.0  # share of draws that take a partial (1- or few-view) cloud of the object


@dataclass
class LossConfig:
    lambda_image: float = 1.0  # weight of shape <-> image InfoNCE
    lambda_text: float = 1.0  # weight of shape <-> text InfoNCE
    init_logit_scale: float = INIT_LOGIT_SCALE  # ln(1 / 0.07)


@dataclass
class OptimConfig:
    lr: float = 5e-5  # AdamW
    min_lr: float = 1e-7  # cosine annealing floor, reached at the last step
    weight_decay: float = 0.01  # AdamW's default


@dataclass
class TrainerConfig:
    out_dir: str = "runs/ddclip"  # checkpoints, logs, the exported model
    max_epochs: int = 80
    max_steps: int = -1  # stop earlier than max_epochs (-1: no limit)
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: Any = "auto"  # number of devices per node, or a list of ids
    num_nodes: int = 1
    strategy: str = "auto"  # auto (DDP with >1 device) | ddp | ...
    precision: str = "auto"  # auto: bf16-mixed on GPUs with native bf16 (Ampere on), else 16-mixed; 32-true on CPU
    seed: int = 123
    logger: str = "csv"  # csv | tensorboard | wandb
    log_every_n_steps: int = 50
    val_every_n_epochs: int = 1
    limit_val_batches: float = 1.0
    progress_bar: bool = True
    resume: str = ""  # a checkpoint path, or "last" for out_dir/checkpoints/last.ckpt


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    gaussian: GaussianConfig = field(default_factory=GaussianConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        config = cls()
        for section, values in (data or {}).items():
            if not hasattr(config, section):
                raise ValueError(f"unknown config section {section!r}; known: {_names(config)}")
            if not isinstance(values, dict):
                raise ValueError(f"config section {section!r} must be a mapping, got {values!r}")
            for key, value in values.items():
                _set(config, f"{section}.{key}", value)
        config.validate()
        return config

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
        """Read a YAML config (None: defaults), then apply ``section.key=value`` overrides."""
        data = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such config file")
            try:
                data = yaml.safe_load(read_text(path)) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: not valid YAML ({exc})") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path}: a training config is a YAML mapping of sections, got {type(data).__name__}")
        config = cls.from_dict(data)
        for override in overrides:
            key, sep, value = override.partition("=")
            if not sep:
                raise ValueError(f"override {override!r} is not of the form section.key=value")
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ValueError(f"override {override!r}: {value!r} is not a YAML value") from None
            _set(config, key.strip(), parsed)
        config.validate()
        return config

    def validate(self) -> None:
        d = self.data
        if not 1 <= d.min_views <= d.max_views:
            raise ValueError(
                f"data.min_views..max_views must satisfy 1 <= min <= max, got {d.min_views}..{d.max_views}"
            )
        if d.batch_size < 1 or d.val_views < 1:
            raise ValueError("data.batch_size and data.val_views must be >= 1")
        if self.trainer.logger not in ("csv", "tensorboard", "wandb"):
            raise ValueError(f"trainer.logger must be csv, tensorboard or wandb, got {self.trainer.logger!r}")
        if self.model.kind not in ("duoduo", "gaussian"):
            raise ValueError(f"model.kind must be duoduo or gaussian, got {self.model.kind!r}")
        if self.gaussian.points < 0:
            raise ValueError(f"gaussian.points must be >= 0, got {self.gaussian.points}")
        if self.optim.lr <= 0 or self.optim.min_lr < 0:
            raise ValueError("optim.lr must be > 0 and optim.min_lr >= 0")


def _names(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]


def _set(config: TrainConfig, dotted: str, value: Any) -> None:
    section, _, key = dotted.partition(".")
    target = getattr(config, section, None)
    if target is None or not dataclasses.is_dataclass(target):
        raise ValueError(f"unknown config section {section!r} in {dotted!r}; known: {_names(config)}")
    fields = {f.name: f for f in dataclasses.fields(target)}
    if key not in fields:
        raise ValueError(f"unknown config key {dotted!r}; {section} has {sorted(fields)}")
    current = getattr(target, key)
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ValueError(f"{dotted} must be true or false, got {value!r}")
    if isinstance(current, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads "1e-3" as a string
            value = float(value)
        except ValueError:
            raise ValueError(f"{dotted} must be a number, got {value!r}") from None
    typed = isinstance(current, (int, float, str)) and not isinstance(current, bool) and fields[key].type != "Any"
    if typed and not isinstance(value, type(current)):
        raise ValueError(f"{dotted} must be {type(current).__name__}, got {value!r}")
    setattr(target, key, value)
