"""The one preprocessing of every point cloud that reaches the GS encoder: training data, evaluation,
the perception engine / ROS node and the ``ddclip`` command all call ``prepare_cloud``.

1. validate (finite (N, 3) points, colours in [0, 1] or 0..255);
2. voxel-average: one point per occupied voxel (mean position and colour), the voxel edge a fixed
   fraction of the cloud's bounding-box diagonal, so overlapping views or a dense sensor do not
   change the density the encoder sees;
3. point budget: at most ``max_points``, a random subset seeded by ``seed`` (anything numpy's
   default_rng takes; default: the cloud's size after step 2, so the same cloud always gives the
   same subset);
4. centre on the bounding-box centre and divide by the largest distance from it (unit sphere).

Frame convention: z is up (against gravity), as in ROS body frames (REP-103: x forward, y left, z up)
and in the renders the training clouds are fused from (pybullet's world, objects standing upright).
The object may have any yaw. A camera optical frame (z forward, y down) must be turned first
(``ddclip_ros.pointcloud`` does so for frames named ``*_optical_frame``). Positions and scale are
normalised here, so the frame's origin and units do not matter.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from .lift import as_points


@dataclass(frozen=True)
class CloudSettings:
    """How clouds are prepared for an encoder; saved with it (``GSEncoderConfig.cloud``)."""

    max_points: int = 4096
    voxel_fraction: float = 1 / 128  # voxel edge / bounding-box diagonal; 0 = no voxel averaging
    min_points: int = 16  # fewer points after voxel averaging: refused
    # Trained on random subsets of this many Gaussians, lifted from max_points (0: all of them). Lifted
    # from fewer points, each Gaussian is larger (scales come from its nearest neighbours): inference
    # lifts at max_points too and then draws, so it sees what training saw.
    draw_points: int = 0

    def __post_init__(self) -> None:
        if not 4 <= self.min_points <= self.max_points:
            raise ValueError(f"need 4 <= min_points <= max_points, got {self.min_points}, {self.max_points}")
        if self.draw_points < 0:
            raise ValueError(f"draw_points must be >= 0, got {self.draw_points}")
        if not 0.0 <= self.voxel_fraction < 1.0:
            raise ValueError(f"voxel_fraction must be in [0, 1), got {self.voxel_fraction}")

    def to_json(self) -> str:
        data = asdict(self)
        if not self.draw_points:  # as written before it existed (data files, encoder metadata)
            del data["draw_points"]
        return json.dumps(data, sort_keys=True)


def draw_subset(features: np.ndarray, draw_points: int, seed: int = 0) -> np.ndarray:
    """``draw_points`` of the rows (Gaussians), in their order, drawn with ``seed``; all when 0 or fewer."""
    if not draw_points or len(features) <= draw_points:
        return features
    return features[np.sort(np.random.default_rng(seed).choice(len(features), draw_points, replace=False))]


@dataclass
class PreparedCloud:
    """points (M, 3) float32 in the unit sphere, colours (M, 3) in [0, 1]; original = points * scale + centre."""

    points: np.ndarray
    colours: np.ndarray
    centre: np.ndarray
    scale: float

    def __len__(self) -> int:
        return len(self.points)


def voxel_average(points: np.ndarray, colours: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """One point per occupied voxel: the mean position and colour of the points inside it."""
    if voxel <= 0:
        raise ValueError(f"voxel size must be > 0, got {voxel}")
    cells = np.floor((points - points.min(0)) / voxel).astype(np.int64)
    extent = cells.max(0) + 1
    # One integer per voxel: a 1-D unique is several times faster than np.unique(axis=0).
    keys = (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    values = np.concatenate([points, colours], axis=1).astype(np.float64)
    sums = np.stack([np.bincount(inverse, weights=values[:, i], minlength=len(counts)) for i in range(6)], 1)
    means = sums / counts[:, None]
    return means[:, :3].astype(np.float32), np.clip(means[:, 3:], 0, 1).astype(np.float32)


def prepare_cloud(
    points: object, colours: object, settings: CloudSettings | None = None, *, seed: object = None
) -> PreparedCloud:
    """A raw coloured cloud -> the encoder's input cloud (see the module docstring). ValueError names
    what is wrong with bad input (shapes, NaN, colour range, too few points)."""
    settings = settings or CloudSettings()
    pts, cols = as_points(points, colours)
    diagonal = float(np.linalg.norm(pts.max(0) - pts.min(0)))
    if settings.voxel_fraction > 0 and diagonal > 0:
        pts, cols = voxel_average(pts, cols, diagonal * settings.voxel_fraction)
    if len(pts) < settings.min_points:
        raise ValueError(
            f"a cloud of {len(pts)} distinct points (after voxel averaging) is too small to embed "
            f"(need {settings.min_points})"
        )
    if len(pts) > settings.max_points:
        rng = np.random.default_rng(len(pts) if seed is None else seed)
        keep = np.sort(rng.choice(len(pts), settings.max_points, replace=False))
        pts, cols = pts[keep], cols[keep]
    positions = pts.astype(np.float64)
    centre = (positions.min(0) + positions.max(0)) / 2
    scale = float(np.sqrt(((positions - centre) ** 2).sum(1)).max()) or 1.0
    return PreparedCloud(((positions - centre) / scale).astype(np.float32), cols, centre.astype(np.float32), scale)
