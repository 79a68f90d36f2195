"""Point clouds per track for the Gaussian-splat encoder, fused with the views' embedding.

The engine keeps the latest cloud of each track (bounded, least recently updated evicted); every
encode job of the track carries it, and the encoder thread fuses the two embeddings with
``ddclip_core.fusion.fuse_embeddings`` (weight ``gaussian_weight``; a track without views is its
cloud alone, one without a cloud its views alone). The fused embeddings live in their own space,
named by ``fusion_suffix``: the GS encoder's weights and the weight.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from ..fusion import fuse_embeddings
from ..gaussians import CloudEmbedder
from ..text_space import check_text_space
from .worker import EncodeJob

log = logging.getLogger(__name__)

Cloud = tuple[np.ndarray, np.ndarray]  # prepared: points (N, 3) float32 in the unit sphere, colours in [0, 1]


class TrackClouds:
    def __init__(self, embedder: CloudEmbedder, gaussian_weight: float, max_tracks: int) -> None:
        if not 0.0 <= gaussian_weight <= 1.0:
            raise ValueError(f"gaussian_weight must be in [0, 1], got {gaussian_weight}")
        self.embedder, self.gaussian_weight, self.max_tracks = embedder, gaussian_weight, max_tracks
        self._clouds: OrderedDict[str, Cloud] = OrderedDict()
        self._embedded: dict[str, tuple[Cloud, str, np.ndarray]] = {}  # each track's current cloud's, and by what
        self._lock = threading.Lock()  # callbacks add, services forget, the encoder thread reads jobs only
        self.reused = 0  # cloud embeddings not computed again
        self._checked = ""  # the weights id whose text space check_space has compared

    @property
    def fusion_suffix(self) -> str:
        return f"+gs:{self.embedder.encoder.weights_id}@w{self.gaussian_weight:g}"

    def check_space(self, model: Any) -> str:
        """Refuse a view model whose space is not the GS encoder's: another width, or, where the encoder's
        checkpoint records it, another CLIP text tower (TextSpaceMismatch). Returns ``fusion_suffix``."""
        encoder = self.embedder.encoder
        name = f"the GS encoder {encoder.weights_id}"
        if encoder.embed_dim != model.embed_dim:
            raise ValueError(f"{name} embeds into {encoder.embed_dim} dimensions, the model into {model.embed_dim}: "
                             "they must share one CLIP space")  # fmt: skip
        if self._checked != model.weights_id:
            advice = "Use the view model whose text tower made its targets, or retrain it on targets of this one."
            if not check_text_space(encoder.text_space, model, name, advice):
                log.warning("%s does not record the CLIP text space it was trained against (saved before ddclip "
                            "kept it): it is fused with %s on trust", name, model.weights_id)  # fmt: skip
            self._checked = model.weights_id
        return self.fusion_suffix

    def add(self, track_id: str, points: np.ndarray, colours: np.ndarray) -> Cloud:
        """Keep a track's newest cloud, prepared as the encoder's training clouds were (``prepare_cloud``:
        voxel averaging, point budget, centring and scale); ValueError names what is wrong with a bad one."""
        if not track_id:
            raise ValueError("a point cloud without a track_id")
        cloud = self.embedder.prepare(points, colours)
        with self._lock:
            self._clouds[track_id] = cloud
            self._clouds.move_to_end(track_id)
            while len(self._clouds) > self.max_tracks:
                self._embedded.pop(self._clouds.popitem(last=False)[0], None)
        return cloud

    def get(self, track_id: str) -> Cloud | None:
        with self._lock:
            return self._clouds.get(track_id)

    def forget(self, track_ids: list[str] | None = None) -> None:
        with self._lock:
            for track_id in list(self._clouds) if track_ids is None else track_ids:
                self._clouds.pop(track_id, None)
                self._embedded.pop(track_id, None)

    def encode(self, jobs: list[EncodeJob], encode_views: Callable[[list[EncodeJob]], np.ndarray]) -> np.ndarray:
        """One embedding per job: views and cloud each through their encoder (batched), then fused. A track's
        cloud is embedded once: its re-encodes for new views reuse the embedding until a new cloud comes."""
        with_views = [job for job in jobs if job.views]
        views = iter(encode_views(with_views) if with_views else [])
        gaussians = self._cloud_embeddings(jobs)
        out = np.empty((len(jobs), self.embedder.embed_dim), dtype=np.float32)
        for i, job in enumerate(jobs):  # the results come in job order
            mv = next(views) if job.views else None
            out[i] = fuse_embeddings(mv, gaussians.get(i), self.gaussian_weight)
        return out

    def _cloud_embeddings(self, jobs: list[EncodeJob]) -> dict[int, np.ndarray]:
        found, todo = {}, []
        # the encoder's weights are part of the key: a kept embedding must not outlive a new checkpoint
        # or a training step of the encoder (its weights_id follows both)
        encoder_id = self.embedder.encoder.weights_id
        with self._lock:
            for i, job in enumerate(jobs):
                cached = self._embedded.get(job.track_id)
                if (
                    job.points is not None
                    and cached is not None
                    and cached[0] is job.points
                    and cached[1] == encoder_id
                ):
                    found[i] = cached[2]
                    self.reused += 1
                elif job.points is not None:
                    todo.append(i)
        if todo:
            for i, embedding in zip(todo, self.embedder.embed([jobs[i].points for i in todo]), strict=True):
                found[i] = embedding
        with self._lock:
            for i in todo:
                if jobs[i].track_id and self._clouds.get(jobs[i].track_id) is jobs[i].points:
                    self._embedded[jobs[i].track_id] = (jobs[i].points, encoder_id, found[i])
        return found
