"""Which ONNX Runtime execution providers an engine runs on: the best one installed, or the user's list.

Only the CPU provider has been run by ddclip's developers (no GPU was at hand): the TensorRT and CUDA
paths are written to ONNX Runtime's documented options but have NEVER BEEN RUN, and say so when chosen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
SHORT_NAMES = {"tensorrt": PREFERENCE[0], "trt": PREFERENCE[0], "cuda": PREFERENCE[1], "cpu": PREFERENCE[2]}
NEVER_RUN = (
    "ddclip: the {name} path of the ONNX Runtime backend has NEVER BEEN RUN by its developers (no GPU was "
    "available to them); check its embeddings against the CPU provider before relying on it"
)

Provider = str | tuple[str, dict[str, Any]]
PROFILE_OPTIONS = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
VIEWS_PER_CALL_CAP = 192  # per-view graph: activations grow linearly; more views than this run in pieces
OBJECT_VIEWS_BUDGET = 192  # cross-view graph: objects x views of one call, whose attention grows as views^2


@dataclass(frozen=True)
class ShapeLimits:
    """With the TensorRT provider: the largest inputs each graph gets in one call, the range its engines
    are built for (TensorRT sizes its memory for the largest).

    TensorRT builds an engine for a range of input sizes (an optimisation profile). Without one, ONNX
    Runtime builds the engine for the sizes seen so far and builds it again, tens of seconds for ViT-B,
    each time an input grows past them: a node meeting view counts 1, 2, 3, ... would stall at each. With
    these limits each graph's engine is built once for the whole range (and cached on disk), and the
    backend splits any larger call to stay inside it. The default fits the node's defaults."""

    views_per_call: int = 96  # per-view graph: views in one call (max_batch x max_views)
    objects_per_call: int = 8  # cross-view graph: objects in one call (max_batch)
    views_per_object: int = 24  # cross-view graph: views of one object (max(max_views, max_enroll_images))
    texts_per_call: int = 256  # text graph: texts in one call (encode_text's batch_size)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ShapeLimits.{name} must be a positive integer, got {value!r}")

    @classmethod
    def for_node(cls, max_views: int, max_batch: int, max_enroll_images: int) -> ShapeLimits:
        """What the node's calls need: a track's or an enrolment's views as one object, batches of tracks
        split so that one call holds at most OBJECT_VIEWS_BUDGET views (the cross-view attention's memory)."""
        per_object = max(max_views, max_enroll_images)
        return cls(
            views_per_call=min(max(max_batch * max_views, per_object), VIEWS_PER_CALL_CAP),
            objects_per_call=max(1, min(max_batch, OBJECT_VIEWS_BUDGET // per_object)),
            views_per_object=per_object,
        )

    def ranges(self) -> dict[str, tuple[int, int, int]]:
        """(min, opt, max) of each named dynamic axis of the exported graphs. Opt: one object of 12 views,
        what a re-encode of a full track sends, and a few texts, what a query sends."""
        return {
            "views_total": (1, min(12, self.views_per_call), self.views_per_call),
            "objects": (1, 1, self.objects_per_call),
            "views": (1, min(12, self.views_per_object), self.views_per_object),
            "texts": (1, min(32, self.texts_per_call), self.texts_per_call),
        }


def tensorrt_profile(inputs: dict[str, list[int | str]], limits: ShapeLimits) -> dict[str, str]:
    """TensorRT's explicit profile options for a graph with these inputs (name -> dims, a dim a size or
    the name of a dynamic axis), in ONNX Runtime's format "input:1x3x224x224,other:...". Empty when an
    input has an axis the limits do not name, or an unnamed one: ONNX Runtime then keeps its own."""
    ranges = limits.ranges()
    dims = [dim for shape in inputs.values() for dim in shape]
    if any(dim not in ranges if isinstance(dim, str) else dim < 1 for dim in dims):
        return {}
    shapes = []
    for which in range(3):  # min, opt, max
        parts = [
            f"{name}:" + "x".join(str(ranges[dim][which] if isinstance(dim, str) else dim) for dim in dims)
            for name, dims in inputs.items()
        ]
        shapes.append(",".join(parts))
    return dict(zip(PROFILE_OPTIONS, shapes, strict=True))


def own_profile(options: dict[str, Any]) -> bool:
    """Whether TensorRT provider options carry the user's own profile (any of the three options)."""
    return any(key in options for key in PROFILE_OPTIONS)


def with_profile(
    providers: list[tuple[str, dict[str, Any]]], inputs: dict[str, list[int | str]], limits: ShapeLimits
) -> list[tuple[str, dict[str, Any]]]:
    """``providers`` with TensorRT's explicit profile for one graph added, unless the user set one."""
    out = []
    for name, options in providers:
        if name == PREFERENCE[0] and not own_profile(options):
            options = {**options, **tensorrt_profile(inputs, limits)}
        out.append((name, options))
    return out


class ProviderError(ValueError):
    """An execution provider that was asked for but is not installed, or not known to ONNX Runtime."""


def resolve_providers(
    requested: list[Provider] | None, device: str, engine_folder: Path, precision: str
) -> list[tuple[str, dict[str, Any]]]:
    """(name, options) pairs for onnxruntime.InferenceSession, best first, CPU last as the fallback.

    requested: provider names (full, or tensorrt / cuda / cpu) or (name, options) pairs; None picks from
        ``device``: "cpu" -> CPU only; "auto" -> every installed one of TensorRT, CUDA, CPU; "cuda[:N]" ->
        TensorRT and CUDA on GPU N, which must be installed.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    device_id = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    if requested is None:
        if device == "cpu":
            chosen: list[Provider] = [PREFERENCE[2]]
        elif device == "auto" or device.startswith("cuda"):
            chosen = [name for name in PREFERENCE if name in available]
            if device != "auto" and not any(name in available for name in PREFERENCE[:2]):
                raise ProviderError(
                    f"device {device!r} asks for a GPU, but this onnxruntime has no CUDA or TensorRT execution "
                    f"provider (installed: {', '.join(available)}); install onnxruntime-gpu, or use device 'cpu'"
                )
        else:
            raise ProviderError(f"unknown device {device!r} for the onnxruntime backend: use auto, cpu, cuda, cuda:N")
    else:
        chosen = list(requested)
        if not chosen:
            raise ProviderError("an empty list of execution providers was given")
    pairs = [(p, {}) if isinstance(p, str) else (p[0], dict(p[1])) for p in chosen]
    pairs = [(SHORT_NAMES.get(name, name), options) for name, options in pairs]
    missing = [name for name, _ in pairs if name not in available]
    if missing:
        raise ProviderError(
            f"execution provider(s) {', '.join(missing)} not installed in this onnxruntime "
            f"(installed: {', '.join(available)}); GPU providers come with onnxruntime-gpu"
        )
    for index, (name, options) in enumerate(pairs):
        if name == PREFERENCE[0]:
            cache = engine_folder / "tensorrt_cache"
            defaults = {"device_id": device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
            defaults.update(trt_timing_cache_enable=True, trt_fp16_enable=precision == "fp16")
            pairs[index] = (name, {**defaults, **options})
        elif name == PREFERENCE[1]:
            pairs[index] = (name, {"device_id": device_id, **options})
        if name != PREFERENCE[2]:
            log.warning(NEVER_RUN.format(name=name))
    if PREFERENCE[2] not in (name for name, _ in pairs):
        pairs.append((PREFERENCE[2], {}))
    return pairs
