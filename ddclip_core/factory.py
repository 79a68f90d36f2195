"""``load_model``: the one entry point that builds a DuoduoCLIP and puts weights in it."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ._runtime import check_precision, resolve_device
from .config import DEFAULT_ARCH, DuoduoConfig
from .hub import PUBLISHED, RandomWeightsWarning
from .model import DuoduoCLIP
from .onnx.files import is_onnx_export
from .weights import CheckpointError, WeightFile, check_state_dict, read_weights

if TYPE_CHECKING:
    from .onnx.providers import ShapeLimits

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_WARNING = (
    "ddclip: NO WEIGHTS GIVEN - the model is RANDOMLY INITIALISED and its embeddings are meaningless. "
    "Pass weights=PATH (the published Four_1to6F_bs1600_LT6.ckpt, an OpenCLIP ViT-B-32 file or a ddclip "
    "export); `ddclip weights download` fetches the published checkpoint when online."
)


# The published checkpoints by file stem; only these, as published, share the released embeddings' space.
PUBLISHED_STEMS = frozenset(Path(name).stem for _, name, _ in PUBLISHED.values() if name.endswith(".ckpt"))


def load_model(
    weights: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    layers_threshold: int | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    backend: str = "torch",
    providers: list | None = None,
    shape_limits: ShapeLimits | None = None,
) -> DuoduoCLIP:
    """Build a Duoduo CLIP model, ready for inference (eval mode).

    Args:
        weights: the published Lightning checkpoint (``Four_1to6F_bs1600_LT6.ckpt`` layout), an
            OpenCLIP weight file (``open_clip_pytorch_model.bin`` / ``.safetensors``, the starting
            point for training), or a ddclip export (folder or its ``model.safetensors``). The
            format is read from the file's bytes. None: random initialisation, with a loud warning.
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:N".
        precision: "fp32", "fp16", "bf16" or "auto" (the fastest of them whose embeddings match fp32's,
            measured once at load on this device: ``ddclip_core.precision``). Weights stay fp32; on CPU
            the image tower's matmuls run on a pre-packed copy in the precision's type (``_prepacked``),
            on CUDA 16-bit runs under autocast on a copy of the image tower with 16-bit weights
            (``_half_weights``; never run on a GPU here).
        layers_threshold: first visual block with cross-view attention. None: what the checkpoint
            records, else 6 (the published model). Equal to the number of blocks: plain CLIP.
        arch: open_clip architecture name when the file does not record one (default ViT-B-32).
        trust_pickle: allow arbitrary pickled objects in torch checkpoints. Only for files you trust.
        backend: "torch" (this model), or "onnxruntime": ``weights`` is then an ONNX export folder
            (``ddclip weights export SRC OUT --onnx``), run by ONNX Runtime behind the same inference API
            (``ddclip_core.onnx.backend.OnnxRuntimeCLIP``); its precision is the export's.
        providers: onnxruntime only: execution providers, best first (default: from ``device``).
        shape_limits: onnxruntime only: the largest input of each graph per call
            (``ddclip_core.onnx.providers.ShapeLimits``), the range TensorRT builds its engines for.
    """
    if backend == "onnxruntime":
        from .onnx.backend import open_engine

        return open_engine(  # type: ignore[return-value] - the same inference API, not the nn.Module
            weights,
            device=str(device),
            precision=precision,
            layers_threshold=layers_threshold,
            arch=arch,
            providers=providers,
            shape_limits=shape_limits,
        )
    if backend != "torch":
        raise ValueError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}")
    if providers is not None or shape_limits is not None:
        raise ValueError("providers and shape_limits only apply to backend='onnxruntime'")
    if weights is not None and is_onnx_export(weights):
        raise CheckpointError(
            f"{weights} is an ONNX export: load it with backend='onnxruntime' (CLI: --backend onnxruntime)"
        )
    precision = check_precision(precision, allow_auto=True)
    target = resolve_device(device)
    if weights is None:
        warnings.warn(RANDOM_WEIGHTS_WARNING, RandomWeightsWarning, stacklevel=2)
        log.warning(RANDOM_WEIGHTS_WARNING)
        model = DuoduoCLIP(DuoduoConfig.from_arch(arch or DEFAULT_ARCH, layers_threshold))
    else:
        model = _model_from_file(read_weights(weights, trust_pickle=trust_pickle), layers_threshold, arch)
    return model.to(target).eval().set_precision(precision)


def _model_from_file(weights: WeightFile, layers_threshold: int | None, arch: str | None) -> DuoduoCLIP:
    config = weights.config
    if config is None:
        recorded_arch = weights.arch
        if arch and recorded_arch and arch != recorded_arch:
            raise CheckpointError(f"{weights.path} records arch {recorded_arch!r}, but arch={arch!r} was asked for")
        config = DuoduoConfig.from_arch(arch or recorded_arch or DEFAULT_ARCH, weights.layers_threshold)
    recorded_threshold = config.layers_threshold
    if layers_threshold is not None and layers_threshold != config.layers_threshold:
        recorded = weights.config is not None or weights.layers_threshold is not None
        if recorded:
            warnings.warn(
                f"{weights.path.name} was trained with layers_threshold={config.layers_threshold}; "
                f"using layers_threshold={layers_threshold} as asked",
                stacklevel=3,
            )
        config = DuoduoConfig.from_dict({**config.to_dict(), "layers_threshold": layers_threshold})
    model = DuoduoCLIP(config)
    check_state_dict(model.clip.state_dict(), weights.state_dict, f"{weights.path} ({weights.format})", config.arch)
    model.clip.load_state_dict(weights.state_dict, strict=True)
    model.weights_source = str(Path(weights.path).resolve())
    stem = Path(weights.path).stem
    # The published file's name, its layout and threshold (its contents cannot be checked: no fingerprint
    # of it is known offline); a checkpoint of ddclip's own training records its training config, which
    # the published one does not, so one renamed to the published name is not taken for it.
    published = weights.format == "lightning" and stem in PUBLISHED_STEMS and not weights.trained_by_ddclip
    if published and config.layers_threshold == recorded_threshold:
        # the released embeddings were made by these weights as published: their banks accept this model
        model.weights_aliases = (f"published:{stem}",)
    return model
