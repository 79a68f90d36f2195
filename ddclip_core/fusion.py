"""Fuse the multi-view (Duoduo CLIP) and Gaussian (GS-CLIP) embeddings of one object. No ROS in here.

Both encoders embed into the same CLIP space, so a query ranks either by cosine against the same text
embeddings. The fusion is deliberately the simplest one that keeps that property:

    fused = normalise((1 - w) * normalise(multiview) + w * normalise(gaussian))

with ``w = gaussian_weight`` in [0, 1]: 0 is the multi-view embedding alone, 1 the Gaussian embedding
alone, 0.5 the (normalised) mean of the two, i.e. the direction half-way between them on the sphere.
For one object, the cosine against a text embedding t is (1 - w) cos(mv, t) + w cos(gs, t) divided by
that object's blend norm (one positive number), so queries rank for that object by the blend of the two
scores. When one embedding is missing (no views yet, no point cloud for the track) the other is returned,
normalised, whatever the weight: a missing modality is not evidence against the object.

from ddclip_core.fusion import fuse_embeddings
fused = fuse_embeddings(model.encode_views(views), gs_encoder.encode(splats), gaussian_weight=0.5)
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch

Embedding = TypeVar("Embedding", np.ndarray, torch.Tensor)

# Below this norm a vector has no usable direction (a zero embedding, or two opposite ones blended).
_MIN_NORM = 1e-8


def _check(name: str, value: object) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.asarray(value, dtype=np.float32))
    elif isinstance(value, torch.Tensor):
        tensor = value.detach().float()
    else:
        raise TypeError(f"{name} embedding must be a numpy array or torch tensor, got {type(value).__name__}")
    if tensor.ndim not in (1, 2) or tensor.shape[-1] == 0 or tensor.numel() == 0:
        raise ValueError(f"{name} embedding must be (D,) or (N, D) with N, D > 0, got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} embedding contains NaN or inf")
    norms = tensor.norm(dim=-1)
    if (norms < _MIN_NORM).any():
        raise ValueError(f"{name} embedding has a zero-length row (no direction to fuse)")
    return tensor / norms.unsqueeze(-1)


def fuse_embeddings(
    multiview: Embedding | None,
    gaussian: Embedding | None,
    gaussian_weight: float = 0.5,
) -> Embedding:
    """Weighted sum of the L2-normalised embeddings, renormalised; see the module docstring.

    multiview, gaussian: (D,) or (N, D) embeddings of the same object(s) in the same CLIP space, numpy or
    torch (not necessarily normalised: they are normalised here, so that the weight alone sets the mix).
    Either may be None (use the other). gaussian_weight: in [0, 1]; 0 = multi-view only, 1 = Gaussian only.
    Returns the same shape, L2-normalised, float32, as a torch tensor (on the inputs' device) if either
    input is one, else as a numpy array. Raises ValueError for a bad weight, shape mismatch, NaN/inf or a
    zero-length embedding, and when both are None.
    """
    if isinstance(gaussian_weight, bool) or not isinstance(gaussian_weight, (int, float)):
        raise TypeError(f"gaussian_weight must be a number in [0, 1], got {type(gaussian_weight).__name__}")
    if not (math.isfinite(gaussian_weight) and 0.0 <= gaussian_weight <= 1.0):
        raise ValueError(
            f"gaussian_weight must be in [0, 1] (0 = multi-view only, 1 = Gaussian only), got {gaussian_weight}"
        )
    if multiview is None and gaussian is None:
        raise ValueError("nothing to fuse: both the multi-view and the Gaussian embedding are missing")
    as_torch = isinstance(multiview, torch.Tensor) or isinstance(gaussian, torch.Tensor)
    device = next(e.device for e in (multiview, gaussian) if isinstance(e, torch.Tensor)) if as_torch else None
    mv = None if multiview is None else _check("multi-view", multiview)
    gs = None if gaussian is None else _check("Gaussian", gaussian)
    if mv is not None and gs is not None:
        if mv.shape != gs.shape:
            shapes = f"{tuple(mv.shape)} and Gaussian embedding {tuple(gs.shape)}"
            raise ValueError(f"multi-view embedding {shapes} differ in shape")
        gs = gs.to(mv.device)
        blended = (1.0 - gaussian_weight) * mv + gaussian_weight * gs
        norms = blended.norm(dim=-1, keepdim=True)
        # Opposite embeddings at a balanced weight cancel to ~0, which has no direction: keep, row by row,
        # the embedding with the larger weight (multi-view at a tie) rather than amplify rounding noise.
        fallback = gs if gaussian_weight > 0.5 else mv
        fused = torch.where(norms < 1e-6, fallback, blended / norms.clamp_min(_MIN_NORM))
    else:
        fused = mv if mv is not None else gs
    if as_torch:
        return fused.to(device)
    return fused.numpy()
