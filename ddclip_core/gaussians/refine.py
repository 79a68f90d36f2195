"""Refining lifted Gaussians against posed RGB images with gsplat (optional, CUDA only).

GS-CLIP's recipe: positions stay fixed to the input points; colour (SH degree 0), opacity, scale
and rotation are optimised for 500 steps with opacity reset every 50. Written against gsplat's
documented ``gsplat.rasterization`` API (viewmats are world-to-camera, OpenCV axes; colours given as
SH coefficients (N, 1, 3) with sh_degree=0). This path is not exercised by the test suite: gsplat
needs CUDA and is not installed here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .splats import SH_C0, Gaussians

# Adam learning rates of the 3DGS reference for these parameters; opacity resets go to this value.
_LR = {"f_dc": 2.5e-3, "opacity": 5e-2, "log_scale": 5e-3, "quat": 1e-3}
_RESET_OPACITY = 0.01


class RefinementUnavailableWarning(UserWarning):
    """Refinement was asked for but cannot run here (no gsplat or no CUDA): the lift is un-refined."""


@dataclass
class PosedImage:
    """One RGB view: image (H, W, 3) uint8 or float [0, 1], K (3, 3), world_to_camera (4, 4) (OpenCV)."""

    image: np.ndarray
    K: np.ndarray
    world_to_camera: np.ndarray

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image)
        if self.image.ndim != 3 or self.image.shape[2] != 3:
            raise ValueError(f"PosedImage: image must be (H, W, 3), got {self.image.shape}")
        self.K = np.asarray(self.K, dtype=np.float32)
        self.world_to_camera = np.asarray(self.world_to_camera, dtype=np.float32)
        if self.K.shape != (3, 3) or self.world_to_camera.shape != (4, 4):
            raise ValueError(f"PosedImage: K must be 3x3 and world_to_camera 4x4, got {self.K.shape}, "
                             f"{self.world_to_camera.shape}")  # fmt: skip


def refinement_unavailable(device: str = "cuda") -> str | None:
    """Why refinement cannot run here, or None when it can."""
    if importlib.util.find_spec("gsplat") is None:
        return "gsplat is not installed (pip install gsplat; needs a CUDA GPU)"
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return f"gsplat rasterizes on CUDA only, and device={device!r} / CUDA available={torch.cuda.is_available()}"
    return None


def refine_gaussians(
    gaussians: Gaussians,
    views: Sequence[PosedImage],
    *,
    steps: int = 500,
    opacity_reset_every: int = 50,
    device: str = "cuda",
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Gaussians:
    """Optimise colour, opacity, scale and rotation (L1 photometric loss); positions stay fixed.

    All views must share one image size. Raises RuntimeError when gsplat or CUDA is missing.
    """
    reason = refinement_unavailable(device)
    if reason:
        raise RuntimeError(f"cannot refine Gaussians: {reason}")
    import gsplat  # guarded above: optional dependency

    sizes = {v.image.shape[:2] for v in views}
    if len(sizes) != 1:
        raise ValueError(f"all views must have the same size for one rasterization call, got {sorted(sizes)}")
    height, width = sizes.pop()
    dev = torch.device(device)
    targets = torch.stack([_as_float_image(v.image) for v in views]).to(dev)
    viewmats = torch.from_numpy(np.stack([v.world_to_camera for v in views])).to(dev)
    Ks = torch.from_numpy(np.stack([v.K for v in views])).to(dev)
    backgrounds = torch.tensor(background, device=dev).expand(len(views), 3)

    means = torch.from_numpy(gaussians.positions).to(dev)  # fixed: no gradient
    params = {
        "f_dc": (torch.from_numpy(gaussians.colours).to(dev) - 0.5) / SH_C0,
        "opacity": torch.logit(torch.from_numpy(gaussians.opacity).to(dev).clamp(1e-6, 1 - 1e-6)),
        "log_scale": torch.log(torch.from_numpy(gaussians.scales).to(dev)),
        "quat": torch.from_numpy(gaussians.rotations).to(dev),
    }
    params = {name: value.clone().requires_grad_(True) for name, value in params.items()}
    optimizer = torch.optim.Adam([{"params": [p], "lr": _LR[name]} for name, p in params.items()], eps=1e-15)
    reset_logit = float(np.log(_RESET_OPACITY / (1 - _RESET_OPACITY)))

    for step in range(1, steps + 1):
        rendered, _, _ = gsplat.rasterization(
            means=means,
            quats=params["quat"],  # gsplat normalises quaternions itself
            scales=torch.exp(params["log_scale"]),
            opacities=torch.sigmoid(params["opacity"]),
            colors=params["f_dc"][:, None, :],
            viewmats=viewmats,
            Ks=Ks,
            width=width,
            height=height,
            sh_degree=0,
            backgrounds=backgrounds,
        )
        loss = (rendered - targets).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % opacity_reset_every == 0 and step < steps:
            _reset_opacity(optimizer, params["opacity"], reset_logit)

    with torch.no_grad():
        return Gaussians(
            positions=gaussians.positions,
            colours=(0.5 + SH_C0 * params["f_dc"]).clamp(0, 1).cpu().numpy(),
            opacity=torch.sigmoid(params["opacity"]).cpu().numpy(),
            scales=torch.exp(params["log_scale"]).cpu().numpy(),
            rotations=params["quat"].cpu().numpy(),
        )


def _reset_opacity(optimizer: torch.optim.Optimizer, logit: torch.Tensor, reset_logit: float) -> None:
    # As in the 3DGS reference: cap opacity low so that floaters must earn it back, and forget the
    # optimiser's moments for it (stale momentum would undo the reset at once).
    with torch.no_grad():
        logit.clamp_(max=reset_logit)
    state = optimizer.state.get(logit, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key].zero_()


def _as_float_image(image: np.ndarray) -> torch.Tensor:
    if image.dtype == np.uint8:
        return torch.from_numpy(image.astype(np.float32) / 255.0)
    return torch.from_numpy(np.clip(image.astype(np.float32), 0.0, 1.0))
