"""Coloured points -> Gaussians: the GS-CLIP lift, with positions fixed to the points.

``lift_points`` is the initialisation of 3D Gaussian Splatting (isotropic scale from the mean squared
distance to the 3 nearest neighbours, identity rotation, constant low opacity) with the points'
own colours. ``lift`` adds the optional refinement of colour, opacity, scale and rotation against
posed RGB images (``refine.py``: gsplat's kernels on CUDA, plain torch elsewhere) and says on its
result whether that happened.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._knn import knn_sq_distances
from .refine import PosedImage, Refinement, RefinementUnavailableWarning, refine_gaussians, refinement_unavailable
from .splats import Gaussians

_MIN_SQ_DISTANCE = 1e-7  # the reference's floor on the mean squared neighbour distance (duplicates)


@dataclass
class LiftResult:
    """The lifted Gaussians and whether they were refined against images (and if not, why)."""

    gaussians: Gaussians
    refined: bool
    note: str
    refinement: Refinement | None = None  # the optimisation's losses, resets and time, when refined


def as_points(points: object, colours: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate a coloured point cloud: float32 points (N, 3), colours (N, 3) in [0, 1].

    Colours may be integers in 0..255 or floats in [0, 1].
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    if len(pts) == 0:
        raise ValueError("empty point cloud (0 points)")
    pts = pts.astype(np.float32)
    bad = ~np.isfinite(pts).all(1)
    if bad.any():
        raise ValueError(f"points contain NaN or infinite coordinates in {int(bad.sum())} of {len(pts)} rows")
    cols = np.asarray(colours)
    if cols.ndim != 2 or cols.shape[1] != 3:
        raise ValueError(f"colours must have shape (N, 3), got {cols.shape}")
    if len(cols) != len(pts):
        raise ValueError(f"{len(cols)} colours for {len(pts)} points: counts must match")
    if cols.dtype.kind in "iu":
        if (cols < 0).any() or (cols > 255).any():
            raise ValueError("integer colours must be in 0..255")
        cols = cols.astype(np.float32) / 255.0
    else:
        cols = cols.astype(np.float32)
        if not np.isfinite(cols).all() or (cols < 0).any() or (cols > 1).any():
            raise ValueError("float colours must be finite and in [0, 1] (integers: 0..255)")
    return pts, cols


def lift_points(points: object, colours: object, *, k: int = 3, opacity: float = 0.1) -> Gaussians:
    """One Gaussian per point: scale sqrt(mean squared distance to the k nearest other points) on all
    three axes, identity rotation, the given opacity. Needs at least k + 1 points."""
    pts, cols = as_points(points, colours)
    if not 0.0 < opacity < 1.0:
        raise ValueError(f"opacity must be in (0, 1), got {opacity}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(pts) <= k:
        raise ValueError(f"lifting needs more than k={k} points to estimate scales, got {len(pts)}")
    mean_sq = np.maximum(knn_sq_distances(pts, k).mean(1), _MIN_SQ_DISTANCE)
    rotations = np.zeros((len(pts), 4), np.float32)
    rotations[:, 0] = 1.0
    return Gaussians(
        positions=pts,
        colours=cols,
        opacity=np.full(len(pts), opacity, np.float32),
        scales=np.repeat(np.sqrt(mean_sq)[:, None], 3, axis=1),
        rotations=rotations,
    )


def lift(
    points: object,
    colours: object,
    views: Sequence[PosedImage] | None = None,
    *,
    k: int = 3,
    opacity: float = 0.1,
    steps: int = 500,
    opacity_reset_every: int = 50,
    device: str = "cpu",
    backend: str = "auto",
) -> LiftResult:
    """Lift points to Gaussians, then refine them against ``views`` (see ``refine_gaussians``).

    Without views, or when refinement cannot run (gsplat missing, CUDA asked for but absent), the
    un-refined lift is returned with ``refined=False`` and a note saying why (the latter also warns
    with RefinementUnavailableWarning).
    """
    gaussians = lift_points(points, colours, k=k, opacity=opacity)
    if not views:
        return LiftResult(gaussians, False, "no images given: un-refined lift")
    reason = refinement_unavailable(device, backend)
    if reason:
        warnings.warn(f"Gaussians not refined: {reason}", RefinementUnavailableWarning, stacklevel=2)
        return LiftResult(gaussians, False, f"not refined: {reason}")
    refined = refine_gaussians(
        gaussians, views, steps=steps, opacity_reset_every=opacity_reset_every, device=device, backend=backend
    )
    note = f"refined for {steps} steps ({refined.backend} renderer, {refined.seconds:.1f} s)"
    return LiftResult(refined.gaussians, True, note, refined)


def points_from_depth(
    depth: np.ndarray,
    intrinsics: np.ndarray,
    rgb: np.ndarray,
    *,
    depth_scale: float = 1.0,
    mask: np.ndarray | None = None,
    max_depth: float | None = None,
    camera_to_world: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Back-project a depth image to coloured points (pinhole, OpenCV axes: x right, y down, z forward).

    depth (H, W) in units such that depth * depth_scale is metres (1e-3 for uint16 millimetres);
    zero, negative and non-finite depths are holes. intrinsics (3, 3) K; rgb (H, W, 3) aligned with
    the depth; mask (H, W) bool keeps only the object's pixels. camera_to_world (4, 4) moves the
    points to the world frame. Returns points (M, 3) float32 and colours (M, 3) float32 in [0, 1].
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be an (H, W) image, got shape {depth.shape}")
    rgb = np.asarray(rgb)
    if rgb.shape != (*depth.shape, 3):
        raise ValueError(f"rgb must be (H, W, 3) aligned with depth {depth.shape}, got {rgb.shape}")
    K = np.asarray(intrinsics, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"intrinsics must be a finite 3x3 K with positive focal lengths, got {K.tolist()}")
    z = depth.astype(np.float64) * depth_scale
    valid = np.isfinite(z) & (z > 0)
    if max_depth is not None:
        valid &= z <= max_depth
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != depth.shape:
            raise ValueError(f"mask shape {mask.shape} does not match depth {depth.shape}")
        valid &= mask
    if not valid.any():
        raise ValueError("no valid depth pixels (all zero, NaN, masked out or beyond max_depth)")
    v, u = np.nonzero(valid)
    z = z[v, u]
    x = (u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) * z / K[0, 0]
    y = (v - K[1, 2]) * z / K[1, 1]
    points = np.stack([x, y, z], axis=1)
    if camera_to_world is not None:
        pose = np.asarray(camera_to_world, dtype=np.float64)
        if pose.shape != (4, 4):
            raise ValueError(f"camera_to_world must be 4x4, got {pose.shape}")
        points = points @ pose[:3, :3].T + pose[:3, 3]
    colours = rgb[v, u]
    colours = colours.astype(np.float32) / 255.0 if colours.dtype == np.uint8 else colours.astype(np.float32)
    return as_points(points, colours)
