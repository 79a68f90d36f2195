"""Architecture and preprocessing configuration of a Duoduo CLIP model.

A config is small, JSON-serialisable and complete: together with a state dict it rebuilds the
model exactly (it travels inside this project's safetensors export).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import open_clip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULT_ARCH = "ViT-B-32"
DEFAULT_LAYERS_THRESHOLD = 6


@dataclass
class PreprocessConfig:
    """How uint8 views become network input (the published recipe by default)."""

    image_size: int = 224
    crop_size: int = 208  # published: RandomCrop(224 - 16) then Resize(224)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if not 0 < self.crop_size <= self.image_size:
            raise ValueError(f"crop_size must be in 1..image_size ({self.image_size}), got {self.crop_size}")


@dataclass
class DuoduoConfig:
    """Everything needed to build a DuoduoCLIP network (weights aside).

    clip_cfg: an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``), as in
        open_clip's ``model_configs/*.json``.
    layers_threshold: visual blocks with index >= this attend across all views of an object;
        blocks below attend within one view. Equal to the number of blocks: plain CLIP.
    """

    arch: str = DEFAULT_ARCH
    clip_cfg: dict[str, Any] = field(default_factory=dict)
    layers_threshold: int = DEFAULT_LAYERS_THRESHOLD
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        if isinstance(self.preprocess, dict):
            self.preprocess = PreprocessConfig(**self.preprocess)
        if not self.clip_cfg:
            self.clip_cfg = arch_clip_cfg(self.arch)
        self.validate()

    @classmethod
    def from_arch(cls, arch: str = DEFAULT_ARCH, layers_threshold: int | None = None) -> DuoduoConfig:
        threshold = DEFAULT_LAYERS_THRESHOLD if layers_threshold is None else layers_threshold
        return cls(arch=arch, clip_cfg=arch_clip_cfg(arch), layers_threshold=threshold)

    @property
    def num_blocks(self) -> int:
        return int(self.clip_cfg["vision_cfg"]["layers"])

    @property
    def embed_dim(self) -> int:
        return int(self.clip_cfg["embed_dim"])

    def validate(self) -> None:
        vision = self.clip_cfg.get("vision_cfg", {})
        layers = vision.get("layers")
        if not isinstance(layers, int):
            raise ValueError(f"{self.arch}: only plain ViT image towers are supported (vision_cfg.layers={layers!r})")
        unsupported = {
            key: vision[key]
            for key in ("timm_model_name", "attentional_pool", "final_ln_after_pool", "block_type")
            if vision.get(key)
        }
        if vision.get("pool_type", "tok") != "tok":
            unsupported["pool_type"] = vision["pool_type"]
        if unsupported:
            raise ValueError(
                f"{self.arch}: Duoduo CLIP pools the CLS token of a plain ViT; unsupported vision options {unsupported}"
            )
        if not 0 <= self.layers_threshold <= layers:
            raise ValueError(f"layers_threshold must be in 0..{layers} for {self.arch}, got {self.layers_threshold}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DuoduoConfig:
        known = {"arch", "clip_cfg", "layers_threshold", "preprocess"}
        extra = set(data) - known
        if extra:
            raise ValueError(f"unknown keys in ddclip config: {sorted(extra)}")
        return cls(**copy.deepcopy(data))

    @classmethod
    def from_json(cls, text: str) -> DuoduoConfig:
        return cls.from_dict(json.loads(text))


def arch_clip_cfg(arch: str) -> dict[str, Any]:
    """The open_clip model config of a named architecture (open_clip's registry)."""
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"unknown architecture {arch!r}; open_clip knows e.g. ViT-B-32, ViT-B-16, ViT-L-14")
    keep = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "cast_dtype"}
    return {k: copy.deepcopy(v) for k, v in cfg.items() if k in keep}
