"""Gaussians: one object as a set of 3D Gaussians, with activated (physical) attribute values.

The PLY files of 3D Gaussian Splatting store raw parameters (logit opacity, log scale, SH
coefficients, unnormalised quaternion); ``ply.py`` converts between the two. Here every value is
what it means: colours in [0, 1], opacity in [0, 1], positive scales, unit quaternions (w, x, y, z).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SH_C0 = 0.28209479177387814  # degree-0 real spherical harmonic: colour = 0.5 + SH_C0 * f_dc
FEATURE_NAMES = (
    "x", "y", "z", "red", "green", "blue", "opacity", "scale_0", "scale_1", "scale_2",
    "rot_w", "rot_x", "rot_y", "rot_z",
)  # fmt: skip
NUM_FEATURES = len(FEATURE_NAMES)


@dataclass
class Gaussians:
    """N Gaussians of one object. Arrays are converted to float32 and validated on construction.

    positions (N, 3); colours (N, 3) RGB in [0, 1] (view-independent, SH degree 0); opacity (N,)
    in [0, 1]; scales (N, 3) > 0 (standard deviations along the local axes); rotations (N, 4) unit
    quaternions (w, x, y, z). sh_rest: optional (N, M) higher-order SH coefficients in the file's
    ``f_rest_*`` order, kept only so that a PLY round trip loses nothing (the encoder ignores them).
    """

    positions: np.ndarray
    colours: np.ndarray
    opacity: np.ndarray
    scales: np.ndarray
    rotations: np.ndarray
    sh_rest: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.positions = _array("positions", self.positions, (3,))
        n = len(self.positions)
        if n == 0:
            raise ValueError("Gaussians: empty (0 Gaussians); an object needs at least one")
        self.colours = _array("colours", self.colours, (3,), n)
        self.opacity = _array("opacity", self.opacity, (), n)
        self.scales = _array("scales", self.scales, (3,), n)
        self.rotations = _array("rotations", self.rotations, (4,), n)
        if self.sh_rest is not None:
            self.sh_rest = _array("sh_rest", self.sh_rest, (None,), n)
        _check_range("colours", self.colours, 0.0, 1.0)
        _check_range("opacity", self.opacity, 0.0, 1.0)
        if (self.scales <= 0).any():
            raise ValueError(f"Gaussians: scales must be > 0 ({int((self.scales <= 0).any(1).sum())} rows are not)")
        norms = np.linalg.norm(self.rotations, axis=1)
        if (norms < 1e-8).any():
            raise ValueError(f"Gaussians: {int((norms < 1e-8).sum())} rotation quaternions are zero")
        self.rotations = self.rotations / norms[:, None]

    def __len__(self) -> int:
        return len(self.positions)

    def to_features(self) -> np.ndarray:
        """(N, 14) float32 encoder input, normalised per object.

        Positions are centred on the bounding-box centre and divided by the largest distance from it
        (unit sphere); scales are divided by the same factor so that the Gaussians keep their size
        relative to the object. The bounding box, not the mean, is used because min/max do not
        depend on the order of the Gaussians even in floating point, which keeps the encoder
        exactly order-invariant. Quaternions get w >= 0 (q and -q are the same rotation).
        """
        positions = self.positions.astype(np.float64)
        centre = (positions.min(0) + positions.max(0)) / 2
        radius = float(np.sqrt(((positions - centre) ** 2).sum(1)).max())
        radius = radius if radius > 0 else 1.0  # a single Gaussian: nothing to scale
        rotations = np.where(self.rotations[:, :1] < 0, -self.rotations, self.rotations)
        features = np.concatenate(
            [
                (positions - centre) / radius,
                self.colours,
                self.opacity[:, None],
                self.scales / radius,
                rotations,
            ],
            axis=1,
        )
        return features.astype(np.float32)


def _array(name: str, value: object, tail: tuple[int | None, ...], n: int | None = None) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != 1 + len(tail) or any(t is not None and s != t for s, t in zip(array.shape[1:], tail, strict=True)):
        want = ", ".join(["N", *("M" if t is None else str(t) for t in tail)])
        raise ValueError(f"Gaussians: {name} must have shape ({want}), got {array.shape}")
    if n is not None and len(array) != n:
        raise ValueError(f"Gaussians: {name} has {len(array)} rows but positions has {n}")
    bad = ~np.isfinite(array)
    if bad.any():
        rows = bad.reshape(len(array), -1).any(1)
        raise ValueError(f"Gaussians: {name} has NaN or infinite values in {int(rows.sum())} rows")
    return np.ascontiguousarray(array)


def _check_range(name: str, array: np.ndarray, low: float, high: float) -> None:
    outside = (array < low) | (array > high)
    if outside.any():
        raise ValueError(f"Gaussians: {name} must be in [{low}, {high}] ({int(outside.sum())} values are not)")
