"""What the perception engine is configured with: fixed at start (files, sizes) and changeable while it
runs (when to encode, how many matches). One table of ranges serves the engine's checks and the ROS
node's parameter descriptors, so a value refused in one place is refused in the other."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..tracks import TrackPolicy

NO_WEIGHTS = (
    "no weights: set the 'weights' parameter (the published Four_1to6F_bs1600_LT6.ckpt, an OpenCLIP ViT-B-32 file "
    "or a ddclip export; `ddclip weights download` fetches the published one), or allow_random_weights:=true to run "
    "with RANDOM weights, whose names and scores mean nothing (demos and tests only)"
)

# name: (lowest, highest) allowed value, for every numeric setting of the engine
RANGES: dict[str, tuple[float, float]] = {
    "max_views": (1, 64),
    "min_views": (1, 64),
    "reencode_after": (1, 64),
    "max_tracks": (1, 100_000),
    "max_objects": (1, 10_000_000),
    "queue_size": (1, 10_000),
    "max_batch": (1, 1024),
    "k_matches": (1, 1000),
    "max_points": (16, 1_000_000),
    "max_enroll_images": (1, 256),
    "max_sightings": (1, 10_000),
    "view_cache_mb": (0, 1_000_000),
    "gaussian_weight": (0.0, 1.0),
    "timeout_s": (0.05, 3600.0),  # 0 would encode at every view (min_views, reencode_after unheeded)
    "max_age_s": (1.0, 1e7),
    "confidence_threshold": (-1.0, 1.0),
}


@dataclass(frozen=True)
class PerceptionConfig:
    """Fixed for the engine's life: what to load, and the sizes of what it keeps."""

    weights: str = ""  # published .ckpt, OpenCLIP file or ddclip export; "" = $DDCLIP_WEIGHTS / the download
    allow_random_weights: bool = False  # without weights, refuse to start unless this is set
    device: str = "auto"
    precision: str = "auto"  # fastest at parity with fp32 on this machine, measured at start-up
    backend: str = "torch"  # "onnxruntime": weights is an ONNX export folder (ddclip weights export ... --onnx)
    bank: str = ""  # an EmbeddingBank folder to match against; "" = none
    labels: str = ""  # label set ("lvis" or a file); "" = none
    templates: str = "openai"
    memory_path: str = ""  # folder for the object memory and enrolled names; "" = not persisted
    gs_encoder: str = ""  # GS-CLIP encoder for point clouds; "" = none
    gaussian_weight: float = 0.5  # fusion of cloud and views (part of the embedding space's identity)
    max_points: int = 8192
    max_views: int = 12
    max_tracks: int = 200
    max_objects: int = 1000
    max_sightings: int = 32  # sightings kept per remembered object
    memory_sync: str = "normal"  # "normal": survives crashes and SIGKILL; "full": power cuts too (slower)
    queue_size: int = 32
    max_batch: int = 8
    view_cache_mb: int = 512  # per-view tokens kept so each view is encoded once; 0 = off
    view_cache_storage: str = "fp16"  # fp32 (exact), fp16 (max abs error ~1e-5, half the bytes) or bf16

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.view_cache_storage not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"view_cache_storage must be fp32, fp16 or bf16, got {self.view_cache_storage!r}")
        if self.backend not in ("torch", "onnxruntime"):
            raise ValueError(f"backend must be torch or onnxruntime, got {self.backend!r}")
        if self.memory_sync not in ("normal", "full"):
            raise ValueError(f"memory_sync must be normal or full, got {self.memory_sync!r}")

    def weights_to_load(self) -> str | None:
        """``weights``, else the downloaded published checkpoint; None (random weights) only with
        ``allow_random_weights``. A StartupError when there are none: cheap, so the node checks it with its
        parameters, before the model's imports."""
        from ..hub import default_weights
        from .types import StartupError

        weights = self.weights or default_weights()
        if weights is None and not self.allow_random_weights:
            raise StartupError(NO_WEIGHTS)
        return None if weights is None else str(weights)


@dataclass(frozen=True)
class PerceptionSettings:
    """Changeable while the engine runs; ``Perception.update_settings`` checks them together."""

    min_views: int = 3  # views before a track's first encode
    reencode_after: int = 2  # new views that trigger a re-encode
    timeout_s: float = 2.0  # encode whatever a track has after this long without a view
    max_age_s: float = 600.0  # tracks unseen for this long leave the buffer
    k_matches: int = 5  # matches per object and default results per query
    confidence_threshold: float = 0.25  # score a best match must reach to count as confident
    max_enroll_images: int = 24  # images one enrol request may carry

    def __post_init__(self) -> None:
        check_ranges(self)

    def changed(self, max_views: int, views_per_object: int | None = None, /, **changes: Any) -> PerceptionSettings:
        """A copy with ``changes``, checked together with the fixed ``max_views`` and, for a model with shape
        limits (an ONNX engine on TensorRT: ``model_views_per_object``), the most views of one object it takes."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown or read-only settings: {', '.join(unknown)}")
        new = replace(self, **changes)
        if new.min_views > max_views:
            raise ValueError(f"min_views ({new.min_views}) must be <= max_views ({max_views})")
        if views_per_object is not None and new.max_enroll_images > views_per_object:
            raise ValueError(
                f"max_enroll_images ({new.max_enroll_images}) must be <= {views_per_object}, the most views of one "
                "object this ONNX engine takes (its shape limits, set at start from max_views and max_enroll_images)"
            )
        return new

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_ranges(settings: Any) -> None:
    """ValueError naming the first setting of ``settings`` that is outside RANGES or of the wrong type."""
    for item in fields(settings):
        value = getattr(settings, item.name)
        expected = item.type if isinstance(item.type, type) else {"int": int, "float": float}.get(str(item.type))
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{item.name} must be an integer, got {value!r}")
        if expected is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{item.name} must be a number, got {value!r}")
        if item.name in RANGES:
            low, high = RANGES[item.name]
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"{item.name} must be in [{low:g}, {high:g}], got {value!r}")


def model_views_per_object(model: Any) -> int | None:
    """The most views of one object the model takes in one call, where it has such a limit (an ONNX engine
    whose TensorRT profile fixes it: ``OnnxRuntimeCLIP.shape_limits``); None: any number."""
    limits = getattr(model, "shape_limits", None)
    return None if limits is None else limits.views_per_object


def track_policy(config: PerceptionConfig, settings: PerceptionSettings) -> TrackPolicy:
    """The track buffer's policy: the engine's fixed config with its current settings."""
    return TrackPolicy(
        max_views=config.max_views,
        min_views=settings.min_views,
        reencode_after=settings.reencode_after,
        timeout_s=settings.timeout_s,
        max_tracks=config.max_tracks,
        max_age_s=settings.max_age_s,
    )
