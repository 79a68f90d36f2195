"""Which ONNX Runtime execution providers an engine runs on: the best one installed, or the user's list.

Only the CPU provider has been run by ddclip's developers (no GPU was at hand): the TensorRT and CUDA
paths are written to ONNX Runtime's documented options but have NEVER BEEN RUN, and say so when chosen.
"""

from __future__ import annotations

import logging
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
