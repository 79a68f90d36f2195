"""The node's parameters: the engine's configuration (read-only), its settings (writable at run time:
``ros2 param set`` takes effect at once) and the ROS side's own. Ranges come from the engine's table."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from ddclip_core.perception import RANGES, PerceptionConfig, PerceptionSettings


@dataclass(frozen=True)
class AdapterParameters:
    """The ROS side's own parameters (how messages come in)."""

    reliable: bool = False  # input QoS: False = best effort, True = reliable
    input_queue_mb: int = 1024  # view and detection input queues (frames too with reliable) hold this many MiB
    image_transport: str = "raw"  # full frames: "raw" (image) or "compressed" (image/compressed)
    annotate: bool = False  # publish frames with boxes, track ids and best matches on ddclip/annotated
    main_thread_encoder: bool = True  # encode on the main thread (OpenMP runs fastest there); ROS on others
    max_pixels: int = 16_000_000  # larger frames are refused unconverted (a 4K frame has 8.3 million)
    max_view_pixels: int = 1_000_000  # larger views (tracker crops, enrolment images) are refused unconverted


DESCRIPTIONS = {
    "weights": "model weights: the published Four_1to6F_bs1600_LT6.ckpt, an OpenCLIP file or a ddclip export",
    "allow_random_weights": "start without weights, with RANDOM ones whose names and scores mean nothing (tests)",
    "device": "auto (CUDA when present), cpu, cuda, cuda:N",
    "precision": "auto (the fastest whose embeddings match fp32, measured at start-up), fp32, fp16 or bf16",
    "backend": "torch, or onnxruntime to run an ONNX export folder given as weights (ddclip weights export --onnx)",
    "bank": "embedding bank folder to match objects against (ddclip bank ...)",
    "labels": "label set for zero-shot labels: lvis or a .txt/.csv/.json file",
    "templates": "prompt templates for the labels: openai, simple, none or a file",
    "memory_path": "folder for the object memory (memory.db, written through) and enrolled names",
    "gs_encoder": "GS-CLIP encoder (gs_encoder.safetensors) for point clouds on ddclip/points; empty = none",
    "gaussian_weight": "fusion with the views' embedding: 0 = views only, 1 = point cloud only (restart to change: "
    "embeddings of another fusion do not compare)",
    "max_points": "points of a track's cloud lifted to Gaussians (a random subset of larger clouds)",
    "max_views": "views kept per track (diverse ones)",
    "max_tracks": "tracks buffered at most (least recently seen evicted)",
    "max_objects": "objects kept in the object memory (least recently seen forgotten first)",
    "max_sightings": "sightings kept per remembered object",
    "memory_sync": "memory durability: normal (survives crashes and SIGKILL) or full (power cuts too, slower)",
    "queue_size": "encode jobs queued at most (oldest dropped)",
    "max_batch": "tracks encoded together in one forward pass",
    "view_cache_mb": "MiB of per-view tokens kept so that each view is encoded once (re-encodes run new views only "
    "through the per-view blocks); 0 = off",
    "view_cache_storage": "view cache storage: fp32 (exact), fp16 (max abs error ~1e-5, half the bytes) or bf16",
    "min_views": "views before a track's first encode (at most max_views)",
    "reencode_after": "new views that trigger a re-encode",
    "timeout_s": "encode whatever a track has after this long without a view",
    "max_age_s": "tracks unseen for this long are forgotten from the buffer",
    "k_matches": "matches per object and default results per query",
    "confidence_threshold": "cosine score a best match must reach to count as confident",
    "max_enroll_images": "images one ddclip/enroll request may carry",
    "reliable": "input QoS: false = best effort (views and detections queued, frames as sensor data), true = reliable",
    "input_queue_mb": (
        "each queue of views and detections (of frames too with reliable) holds at most this many MiB of its "
        "largest images, 1000 messages at most"
    ),
    "image_transport": "full frames from: raw (the image topic) or compressed (image/compressed)",
    "annotate": "publish full frames with their boxes, track ids and best matches on ddclip/annotated",
    "main_thread_encoder": (
        "run the encoder on the main thread and ROS callbacks on others (default): on CPU the encoder ran "
        "1.3-1.6x faster there than on a thread of its own (bf16, 2 cores); false = an encoder thread"
    ),
    "max_pixels": "full frames with more pixels than this are dropped and counted, not converted "
    "(at run time it can only be lowered: the input queues are sized for the value at start)",
    "max_view_pixels": "views (crops, enrolment images) with more pixels than this are dropped and counted "
    "(at run time it can only be lowered: the input queues are sized for the value at start)",
}
SETTINGS = {item.name for item in fields(PerceptionSettings)}
WRITABLE = SETTINGS | {"max_pixels", "max_view_pixels"}
INT_RANGES = {k: v for k, v in RANGES.items() if isinstance(v[0], int)}
INT_RANGES.update(max_pixels=(1, 1_000_000_000), max_view_pixels=(1, 1_000_000_000))
INT_RANGES["input_queue_mb"] = (1, 1_000_000)
FLOAT_RANGES = {k: v for k, v in RANGES.items() if isinstance(v[0], float)}
CHOICES = {
    "image_transport": ("raw", "compressed"),
    "precision": ("auto", "fp32", "fp16", "bf16"),
    "backend": ("torch", "onnxruntime"),
    "memory_sync": ("normal", "full"),
    "view_cache_storage": ("fp32", "fp16", "bf16"),
}


@dataclass(frozen=True)
class NodeParameters:
    config: PerceptionConfig
    settings: PerceptionSettings
    adapter: AdapterParameters


def parameter_defaults() -> dict[str, Any]:
    """Every parameter with its default, in declaration order (what config/ddclip.yaml lists)."""
    return {
        item.name: item.default
        for group in (PerceptionConfig, PerceptionSettings, AdapterParameters)
        for item in fields(group)
    }


def declare_parameters(node: Any) -> NodeParameters:
    """Declare every parameter (read-only unless the engine can change it at run time) and read them.

    Raises rclpy's InvalidParameterValueException for a value outside its range and ValueError for
    one the engine refuses (min_views > max_views, an unknown image_transport), and a StartupError when
    there are no weights: start-up errors.
    """
    values = {}
    for name, default in parameter_defaults().items():
        descriptor = ParameterDescriptor(description=DESCRIPTIONS[name], read_only=name not in WRITABLE)
        if name in INT_RANGES:
            low, high = INT_RANGES[name]
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
        if name in FLOAT_RANGES:
            low, high = FLOAT_RANGES[name]
            descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
        if name in CHOICES:
            descriptor.additional_constraints = "one of: " + ", ".join(CHOICES[name])
        values[name] = node.declare_parameter(name, default, descriptor).value
    for name, choices in CHOICES.items():
        if values[name] not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {values[name]!r}")
    groups = {}
    for group in (PerceptionConfig, PerceptionSettings, AdapterParameters):
        groups[group] = group(**{item.name: values[item.name] for item in fields(group)})
    config, settings = groups[PerceptionConfig], groups[PerceptionSettings]
    settings.changed(config.max_views)  # checked together: min_views <= max_views
    config.weights_to_load()  # no weights at all: refused here, before the engine's seconds of imports
    return NodeParameters(config, settings, groups[AdapterParameters])


def queue_depth(adapter: AdapterParameters, max_pixels: int) -> int:
    """Messages an image input may queue: bounded by bytes (``input_queue_mb`` of the largest images it
    accepts, 4 bytes a pixel) as well as by count, so 1000 4K frames cannot pile up gigabytes."""
    return max(1, min(1000, adapter.input_queue_mb * 2**20 // (max_pixels * 4)))
