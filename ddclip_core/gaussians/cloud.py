"""A coloured point cloud of one object -> its GS-CLIP embedding: prepare, lift, encode.

What the perception engine (and so the ROS node) and the ``ddclip`` command run per cloud; no ROS in
here. Clouds go through ``prepare_cloud`` with the encoder's own ``config.cloud`` settings, the ones
its training data was made with, so the same cloud always gives the same embedding, here and there.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .encoder import GSCLIPEncoder
from .lift import lift_points
from .preprocess import CloudSettings, draw_subset, prepare_cloud

Cloud = tuple[np.ndarray, np.ndarray]


class CloudEmbedder:
    """``embed([(points (N, 3), colours (N, 3) in [0, 1]), ...]) -> (B, D)`` unit embeddings.

    max_points: a tighter point budget than the encoder's (e.g. the node's ``max_points``); None: the
    encoder's. min_points: likewise a larger minimum.
    """

    def __init__(self, encoder: GSCLIPEncoder, max_points: int | None = None, min_points: int | None = None) -> None:
        trained = encoder.config.cloud
        budget = trained.max_points if max_points is None else min(max_points, trained.max_points)
        least = trained.min_points if min_points is None else max(min_points, trained.min_points)
        if least > budget:
            raise ValueError(f"min_points {least} exceeds the point budget {budget}")
        self.encoder, self.settings = encoder.eval(), replace(trained, max_points=budget, min_points=least)

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    @property
    def max_points(self) -> int:
        return self.settings.max_points

    def prepare(self, points: np.ndarray, colours: np.ndarray) -> Cloud:
        """The cloud the encoder sees: ``prepare_cloud`` with this embedder's settings."""
        cloud = prepare_cloud(points, colours, self.settings)
        return cloud.points, cloud.colours

    def embed(self, clouds: list[Cloud], *, prepared: bool = True) -> np.ndarray:
        """Embeddings of clouds already ``prepare``-d (the engine keeps them so); prepared=False
        prepares them first."""
        if not prepared:
            clouds = [self.prepare(points, colours) for points, colours in clouds]
        draw = self.settings.draw_points
        features = [draw_subset(lift_points(points, colours).to_features(), draw) for points, colours in clouds]
        return self.encoder.encode(features).cpu().numpy()


__all__ = ["CloudEmbedder", "CloudSettings"]
