"""Building a Perception engine from its configuration: weights, bank, labels and GS encoder from files.

Every problem is a StartupError whose message names the setting and what to do, so the node can
exit with one line instead of a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..bank import EmbeddingBank
from ..factory import load_model
from ..gaussians import CloudEmbedder, load_gs_encoder
from ..labels import LabelSet
from ..memory_store import MemoryInUse
from ..model import DuoduoCLIP
from ..onnx.providers import ShapeLimits
from ..precision import probe_views
from ..stamped import Stamp
from .clouds import TrackClouds
from .engine import Perception
from .settings import PerceptionConfig, PerceptionSettings
from .types import ObjectResult, StartupError

log = logging.getLogger(__name__)


def open_perception(
    config: PerceptionConfig,
    settings: PerceptionSettings | None = None,
    on_results: Callable[[list[ObjectResult]], None] | None = None,
    clock: Callable[[], Stamp] | None = None,
) -> Perception:
    weights = config.weights_to_load()
    model = _step(
        "weights",
        lambda: _warm(
            load_model(
                weights,
                device=config.device,
                precision=config.precision,
                backend=config.backend,
                shape_limits=_shape_limits(config, settings or PerceptionSettings()),
            ),
            config.max_views,
        ),
    )
    bank = _step("bank", lambda: EmbeddingBank.load(config.bank, weights_id=model)) if config.bank else None
    labels = _step("labels", lambda: LabelSet(config.labels, templates=config.templates)) if config.labels else None
    clouds = _step("gs_encoder", lambda: _clouds(config, model)) if config.gs_encoder else None
    return _step(
        "memory_path",
        lambda: Perception(
            model, config, settings, bank=bank, labels=labels, clouds=clouds, on_results=on_results, clock=clock
        ),
    )


def _shape_limits(config: PerceptionConfig, settings: PerceptionSettings) -> ShapeLimits | None:
    """What the engine's calls can hold (onnxruntime on TensorRT only): the range its engines are built for."""
    if config.backend != "onnxruntime":
        return None
    return ShapeLimits.for_node(config.max_views, config.max_batch, settings.max_enroll_images)


def _warm(model: DuoduoCLIP, max_views: int) -> DuoduoCLIP:
    """Encode once for each view count a track can have (1..max_views), in the view cache's two halves,
    before the first track: weights get packed, buffers allocated, and the kernels built for each row
    count (oneDNN builds a kernel the first time it sees a shape: +20-40 ms on that encode) at start-up,
    not in the first results' latency. Multi-track batches can still meet new shapes."""
    views = probe_views()
    for count in range(1, max_views + 1):
        batch = [views[i % len(views)] for i in range(count)]
        model.embed_view_tokens(model.view_tokens(batch), [count])
    return model


def _clouds(config: PerceptionConfig, model) -> TrackClouds:
    embedder = CloudEmbedder(load_gs_encoder(config.gs_encoder, device=model.device), config.max_points)
    if embedder.max_points < config.max_points:
        log.info("max_points %d: %s was trained on clouds of at most %d points, so clouds are drawn down to that",
                 config.max_points, config.gs_encoder, embedder.max_points)  # fmt: skip
    clouds = TrackClouds(embedder, config.gaussian_weight, config.max_tracks)
    clouds.check_space(model)  # here, so that a mismatch is reported under gs_encoder
    return clouds


def _step(setting: str, load):
    try:
        return load()
    except StartupError:
        raise
    except (OSError, ValueError, TypeError, RuntimeError, MemoryInUse) as exc:
        raise StartupError(f"{setting}: {exc}") from exc
