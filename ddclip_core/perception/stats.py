"""The engine's counters, with names a user understands (the node's /diagnostics)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .engine import Perception


def engine_stats(engine: Perception) -> list[tuple[str, Any]]:
    worker = engine.worker.stats
    with engine._lock:
        views = engine.buffer.view_counts()
        rows: list[tuple[str, Any]] = [
            ("encode jobs queued", engine.worker.depth),
            ("encode jobs dropped (queue full)", worker.dropped_jobs),
            ("encode jobs replaced by newer views", worker.replaced_jobs),
            ("encode jobs discarded (track forgotten)", worker.discarded_jobs),
            ("failed encoder batches", worker.failed_batches),
            ("failed warm jobs (views encoded ahead)", worker.failed_warm_jobs),
            ("tracks encoded", worker.encoded_tracks),
            ("last batch size", worker.last_batch_size),
            ("last encode time (ms)", round(worker.last_encode_ms, 1)),
            ("last view-to-result time (ms)", round(worker.last_total_ms, 1)),
            ("tracks buffered", len(engine.buffer)),
            ("tracks evicted", engine.buffer.evicted),
            ("mean views per track", round(float(np.mean(views)), 2) if views else 0),
            ("views not kept (near duplicates)", engine.buffer.rejected_views),
            ("frames without detections dropped", engine.pairer.unpaired_dropped),
            ("objects in memory", len(engine.memory)),
            ("enrolled objects", len(engine.enrolled)),
        ]
    if engine.view_cache is not None:
        cache = engine.view_cache.stats
        rows += [
            ("view cache (MiB)", round(engine.view_cache.nbytes / 2**20, 1)),
            ("cached views", engine.view_cache.views),
            ("views encoded once and reused", cache.hits),
            ("views through the per-view blocks", cache.misses),
            ("of those, ahead of their track's encode (idle encoder)", cache.warmed),
            ("view cache tracks evicted (bytes bound)", cache.evicted_objects),
        ]
    if engine.clouds is not None:
        rows.append(("cloud embeddings reused", engine.clouds.reused))
    rows.append(("query texts answered without the text encoder", engine.query_texts.hits))
    named = {name for name, _ in rows}  # the worker's own count, where the health counts the same problem
    return rows + [(name, count) for name, count in engine.health.counters() if name not in named]
