"""Refining lifted Gaussians against posed RGB images (GS-CLIP's recipe), on CPU or CUDA.

Positions stay fixed to the input points; colour (SH degree 0), opacity, scale and rotation are
optimised with Adam against the images (L1 photometric loss), 500 steps, opacity reset every 50.
Two renderers, same conventions (gsplat's: world-to-camera viewmats in OpenCV axes, SH degree 0
colour = 0.5 + SH_C0 * f_dc clamped at 0, pixel centres at +0.5):

- "gsplat": ``gsplat.rasterization``, its CUDA kernels; needs a CUDA device. NOT RUN by this
  project's test suite so far (no GPU where it was written): its parity test with the torch path
  is in tests/test_gaussian_refine.py and skips without CUDA.
- "torch": ``rasterize.py`` (gsplat's reference projection + compositing in plain torch), any device.

``backend="auto"`` takes gsplat's kernels on a CUDA device, the torch path otherwise.
Intrinsics K are given in OpenCV's convention (pixel (u, v) centred at integer (u, v), as
``points_from_depth`` uses) and shifted by half a pixel for the renderers.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .rasterize import rasterize
from .splats import SH_C0, Gaussians

# Adam learning rates of the 3DGS reference for these parameters; opacity resets go to this value.
_LR = {"f_dc": 2.5e-3, "opacity": 5e-2, "log_scale": 5e-3, "quat": 1e-3}
_RESET_OPACITY = 0.01
BACKENDS = ("auto", "gsplat", "torch")


class RefinementUnavailableWarning(UserWarning):
    """Refinement was asked for but cannot run here (gsplat missing): the lift is un-refined."""


@dataclass
class PosedImage:
    """One RGB view: image (H, W, 3) uint8 or float [0, 1], K (3, 3) (OpenCV: pixel centres at integers),
    world_to_camera (4, 4) (OpenCV axes: x right, y down, z forward)."""

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

    def downscaled(self, factor: int) -> PosedImage:
        """The same view ``factor`` times smaller (pixels averaged in factor x factor blocks), K to match:
        the refinement's cost grows with the pixels, so CPUs refine at a fraction of the resolution."""
        height, width = self.image.shape[:2]
        if factor < 1 or height % factor or width % factor:
            raise ValueError(f"downscale factor {factor} must be >= 1 and divide the image size {width}x{height}")
        image = self.image.astype(np.float32) / (255.0 if self.image.dtype == np.uint8 else 1.0)
        image = image.reshape(height // factor, factor, width // factor, factor, 3).mean((1, 3))
        K = self.K.astype(np.float64).copy()
        K[:2, :2] /= factor
        K[:2, 2] = (K[:2, 2] + 0.5) / factor - 0.5  # pixel centres at integers (OpenCV) before and after
        return PosedImage(image, K, self.world_to_camera)


@dataclass
class Refinement:
    """Refined Gaussians (unit quaternions) and how the optimisation went."""

    gaussians: Gaussians
    backend: str
    losses: list[float] = field(default_factory=list)  # L1 loss of each step, before its update
    resets: list[tuple[int, float]] = field(default_factory=list)  # (step, max opacity right after the reset)
    seconds: float = 0.0
    step_times: list[float] = field(default_factory=list)  # seconds since the start, after each step


def refinement_unavailable(device: str = "cpu", backend: str = "auto") -> str | None:
    """Why refinement cannot run here, or None when it can."""
    if backend not in BACKENDS:
        return f"backend must be one of {BACKENDS}, got {backend!r}"
    if importlib.util.find_spec("gsplat") is None:
        return "gsplat is not installed (pip install 'ddclip-py[gaussians]')"
    cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    if backend == "gsplat" and not cuda:
        return f"gsplat's kernels need CUDA, and device={device!r} / CUDA available={torch.cuda.is_available()}"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return "device='cuda' but CUDA is not available"
    return None


def render(
    gaussians: dict[str, torch.Tensor], viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
    background: torch.Tensor, backend: str,
) -> torch.Tensor:  # fmt: skip
    """(C, H, W, 3) images of Gaussians given as means, quats, scales, opacities, colours (activated).

    Ks in the renderers' convention (pixel centres at +0.5)."""
    if backend == "gsplat":
        import gsplat  # refinement_unavailable checked it

        sh = ((gaussians["colours"] - 0.5) / SH_C0)[:, None, :]  # gsplat adds 0.5 back after SH evaluation
        images, _, _ = gsplat.rasterization(
            means=gaussians["means"], quats=gaussians["quats"], scales=gaussians["scales"],
            opacities=gaussians["opacities"], colors=sh, viewmats=viewmats, Ks=Ks, width=width, height=height,
            sh_degree=0, backgrounds=background.expand(len(viewmats), 3),
        )  # fmt: skip
        return images
    images, _ = rasterize(
        gaussians["means"], gaussians["quats"], gaussians["scales"], gaussians["opacities"],
        gaussians["colours"].clamp_min(0.0), viewmats, Ks, width, height, background,
    )  # fmt: skip
    return images


def camera_tensors(views: Sequence[PosedImage], device: torch.device) -> tuple[torch.Tensor, ...]:
    """(targets (C, H, W, 3), viewmats (C, 4, 4), Ks (C, 3, 3) shifted to pixel centres at +0.5)."""
    if not views:
        raise ValueError("no views to refine against")
    sizes = {v.image.shape[:2] for v in views}
    if len(sizes) != 1:
        raise ValueError(f"all views must have the same size for one rasterization call, got {sorted(sizes)}")
    targets = torch.stack([_as_float_image(v.image) for v in views]).to(device)
    viewmats = torch.from_numpy(np.stack([v.world_to_camera for v in views])).to(device)
    Ks = torch.from_numpy(np.stack([v.K for v in views])).to(device).clone()
    Ks[:, :2, 2] += 0.5
    return targets, viewmats, Ks


def activated(params: dict[str, torch.Tensor], means: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "means": means,
        "quats": params["quat"],  # both renderers normalise quaternions themselves
        "scales": torch.exp(params["log_scale"]),
        "opacities": torch.sigmoid(params["opacity"]),
        "colours": 0.5 + SH_C0 * params["f_dc"],
    }


def refine_gaussians(
    gaussians: Gaussians,
    views: Sequence[PosedImage],
    *,
    steps: int = 500,
    opacity_reset_every: int = 50,
    device: str = "cpu",
    backend: str = "auto",
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Refinement:
    """Optimise colour, opacity, scale and rotation (L1 photometric loss); positions stay fixed.

    All views must share one image size. Raises RuntimeError when refinement cannot run
    (``refinement_unavailable`` says why).
    """
    reason = refinement_unavailable(device, backend)
    if reason:
        raise RuntimeError(f"cannot refine Gaussians: {reason}")
    if steps < 1 or opacity_reset_every < 1:
        raise ValueError(f"steps and opacity_reset_every must be >= 1, got {steps}, {opacity_reset_every}")
    dev = torch.device(device)
    if backend == "auto":
        backend = "gsplat" if dev.type == "cuda" else "torch"
    targets, viewmats, Ks = camera_tensors(views, dev)
    height, width = targets.shape[1:3]
    bg = torch.tensor(background, dtype=torch.float32, device=dev)

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
    result = Refinement(gaussians, backend)

    start = time.perf_counter()
    for step in range(1, steps + 1):
        rendered = render(activated(params, means), viewmats, Ks, width, height, bg, backend)
        loss = (rendered - targets).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        result.losses.append(float(loss.detach()))  # also waits for the device: the times below are real
        if step % opacity_reset_every == 0 and step < steps:
            _reset_opacity(optimizer, params["opacity"], reset_logit)
            result.resets.append((step, float(torch.sigmoid(params["opacity"].detach()).max())))
        result.step_times.append(time.perf_counter() - start)
    result.seconds = result.step_times[-1]

    with torch.no_grad():
        quats = torch.nn.functional.normalize(params["quat"], dim=-1)
        result.gaussians = Gaussians(
            positions=gaussians.positions,
            colours=(0.5 + SH_C0 * params["f_dc"]).clamp(0, 1).cpu().numpy(),
            opacity=torch.sigmoid(params["opacity"]).cpu().numpy(),
            scales=torch.exp(params["log_scale"]).cpu().numpy(),
            rotations=quats.cpu().numpy(),
        )
    return result


def render_gaussians(
    gaussians: Gaussians, views: Sequence[PosedImage], *, device: str = "cpu", backend: str = "auto",
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> np.ndarray:  # fmt: skip
    """(C, H, W, 3) float images in [0, 1] of ``gaussians`` seen by the views' cameras (their pixels unused)."""
    reason = refinement_unavailable(device, backend)
    if reason:
        raise RuntimeError(f"cannot render Gaussians: {reason}")
    dev = torch.device(device)
    backend = ("gsplat" if dev.type == "cuda" else "torch") if backend == "auto" else backend
    _, viewmats, Ks = camera_tensors(views, dev)
    height, width = views[0].image.shape[:2]
    tensors = {
        "means": torch.from_numpy(gaussians.positions).to(dev),
        "quats": torch.from_numpy(gaussians.rotations).to(dev),
        "scales": torch.from_numpy(gaussians.scales).to(dev),
        "opacities": torch.from_numpy(gaussians.opacity).to(dev),
        "colours": torch.from_numpy(gaussians.colours).to(dev),
    }
    with torch.no_grad():
        bg = torch.tensor(background, dtype=torch.float32, device=dev)
        return render(tensors, viewmats, Ks, width, height, bg, backend).clamp(0, 1).cpu().numpy()


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
