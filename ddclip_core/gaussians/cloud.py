"""A coloured point cloud of one object -> its GS-CLIP embedding: subsample, lift, encode.

What the ROS node runs per track cloud; no ROS in here. Subsampling is seeded by the cloud's size,
so the same cloud always gives the same embedding.
"""

from __future__ import annotations

import numpy as np

from .encoder import GSCLIPEncoder
from .lift import lift_points


class CloudEmbedder:
    """``embed([(points (N, 3), colours (N, 3) in [0, 1]), ...]) -> (B, D)`` unit embeddings."""

    def __init__(self, encoder: GSCLIPEncoder, max_points: int = 8192, min_points: int = 16) -> None:
        if max_points < min_points or min_points < 4:
            raise ValueError(f"need 4 <= min_points <= max_points, got {min_points}, {max_points}")
        self.encoder, self.max_points, self.min_points = encoder.eval(), max_points, min_points

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    def subsample(self, points: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(points) < self.min_points:
            raise ValueError(f"a cloud of {len(points)} points is too small to embed (need {self.min_points})")
        if len(points) <= self.max_points:
            return points, colours
        keep = np.sort(np.random.default_rng(len(points)).choice(len(points), self.max_points, replace=False))
        return points[keep], colours[keep]

    def embed(self, clouds: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        gaussians = [lift_points(*self.subsample(points, colours)) for points, colours in clouds]
        return self.encoder.encode(gaussians).cpu().numpy()
