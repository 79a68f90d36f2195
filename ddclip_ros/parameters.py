"""The node's parameters, declared with descriptors (ranges; read-only where a change needs a restart)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


@dataclass
class NodeParameters:
    weights: str = ""  # read-only: model weights (published .ckpt, OpenCLIP file, ddclip export); "" = random
    device: str = "auto"
    precision: str = "fp32"
    bank: str = ""  # read-only: an EmbeddingBank folder to match against; "" = none
    labels: str = ""  # read-only: label set ("lvis" or a file); "" = none
    templates: str = "openai"
    memory_path: str = ""  # folder to persist the object memory in; "" = not persisted
    reliable: bool = False  # input QoS: False = sensor data (best effort), True = reliable
    annotate: bool = False  # read-only: publish frames with boxes, track ids and best matches on ddclip/annotated
    main_thread_encoder: bool = False  # read-only: encode on the main thread, where OpenMP spin-waits
    max_pixels: int = 16_000_000  # larger images are refused unconverted (a 4K frame has 8.3 million)
    gs_encoder: str = ""  # read-only: a GS-CLIP encoder (gs_encoder.safetensors); "" = no point cloud input
    gaussian_weight: float = 0.5  # fusion: 0 = views only, 1 = point cloud only
    max_points: int = 8192  # read-only: points of a track's cloud lifted to Gaussians (random subset above it)
    max_views: int = 12
    min_views: int = 3
    reencode_after: int = 2
    timeout_s: float = 2.0
    max_tracks: int = 200
    max_age_s: float = 600.0
    max_objects: int = 1000
    queue_size: int = 32
    max_batch: int = 8
    k_matches: int = 5
    confidence_threshold: float = 0.25


DESCRIPTIONS = {
    "weights": "model weights: the published Four_1to6F_bs1600_LT6.ckpt, an OpenCLIP file or a ddclip export",
    "device": "auto (CUDA when present), cpu, cuda, cuda:N",
    "precision": "fp32, fp16 or bf16",
    "bank": "embedding bank folder to match objects against (ddclip bank ...)",
    "labels": "label set for zero-shot labels: lvis or a .txt/.csv/.json file",
    "templates": "prompt templates for the labels: openai, simple, none or a file",
    "memory_path": "folder for the object memory (saved at shutdown) and enrolled names (saved at once)",
    "reliable": "input QoS: false = sensor data (best effort), true = reliable",
    "annotate": "publish full frames with their boxes, track ids and best matches on ddclip/annotated",
    "main_thread_encoder": (
        "run the encoder on the main thread: OpenMP then spin-waits, faster when the node has its cores to itself, "
        "much slower when other processes compete for them (the default encoder thread does not spin)"
    ),
    "max_pixels": "images with more pixels than this are dropped and counted, not converted",
    "gs_encoder": "GS-CLIP encoder (gs_encoder.safetensors) for point clouds on ddclip/points; empty = none",
    "gaussian_weight": "fusion with the views' embedding: 0 = views only, 1 = point cloud only",
    "max_points": "points of a track's cloud lifted to Gaussians (a random subset of larger clouds)",
    "max_views": "views kept per track (diverse ones)",
    "min_views": "views before a track's first encode",
    "reencode_after": "new views that trigger a re-encode",
    "timeout_s": "encode whatever a track has after this long without a view",
    "max_tracks": "tracks buffered at most (least recently seen evicted)",
    "max_age_s": "tracks unseen for this long are forgotten from the buffer",
    "max_objects": "objects kept in the language-queryable memory",
    "queue_size": "encode jobs queued at most (oldest dropped)",
    "max_batch": "tracks encoded together in one forward pass",
    "k_matches": "matches per object and default results per query",
    "confidence_threshold": "cosine score a best match must reach to count as confident",
}
READ_ONLY = {
    "weights",
    "device",
    "precision",
    "bank",
    "labels",
    "templates",
    "memory_path",
    "reliable",
    "annotate",
    "main_thread_encoder",
    "max_pixels",
    "gs_encoder",
    "max_points",
    "max_views",
    "max_tracks",
    "queue_size",
    "max_batch",
    "max_objects",
}
INT_RANGES = {
    "max_pixels": (1, 1_000_000_000),
    "max_points": (16, 1_000_000),
    "max_views": (1, 64),
    "min_views": (1, 64),
    "reencode_after": (1, 64),
    "max_tracks": (1, 100_000),
    "max_objects": (1, 10_000_000),
    "queue_size": (1, 10_000),
    "max_batch": (1, 1024),
    "k_matches": (1, 1000),
}
FLOAT_RANGES = {
    "gaussian_weight": (0.0, 1.0),
    "timeout_s": (0.0, 3600.0),
    "max_age_s": (1.0, 1e7),
    "confidence_threshold": (-1.0, 1.0),
}


def declare_parameters(node: Any) -> NodeParameters:
    values = {}
    for item in fields(NodeParameters):
        descriptor = ParameterDescriptor(description=DESCRIPTIONS[item.name], read_only=item.name in READ_ONLY)
        if item.name in INT_RANGES:
            low, high = INT_RANGES[item.name]
            descriptor.integer_range = [IntegerRange(from_value=low, to_value=high, step=1)]
        if item.name in FLOAT_RANGES:
            low, high = FLOAT_RANGES[item.name]
            descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high, step=0.0)]
        values[item.name] = node.declare_parameter(item.name, item.default, descriptor).value
    return NodeParameters(**values)
