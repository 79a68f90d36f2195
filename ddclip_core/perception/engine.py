"""Perception: the whole object pipeline of the ddclip node, without ROS.

Views (crops, or full frames + tracked boxes) and point clouds go in per track; tracks are buffered
(TrackBuffer) and, when due, encoded by one worker fed by a bounded queue (EncodeWorker, on a thread of
its own or the caller's: the node runs it on its main thread, where OpenMP is fastest);
each result is stored in the object memory, matched against the bank and the labels, and handed to
``on_results``. Queries, enrolment and forgetting are plain method calls. The ROS node only
converts messages to these calls and results back to messages, so everything here is testable
without DDS.

Threads: inputs and services may come from several threads; ``_lock`` guards the buffer, memory,
captions and frame pairing, ``_bank_lock`` the bank (the worker searches it, enrol/forget edit it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..bank import EmbeddingBank
from ..enrolled import EnrolledObjects
from ..identity import WeightsIdentity
from ..labels import LabelSet
from ..memory import ObjectMemory, SeenObject, Sighting
from ..memory_store import database_path
from ..stamped import Header, Pose, Stamp
from ..tracks import TrackBuffer
from ..view_cache import ViewTokenCache
from . import requests
from .clouds import TrackClouds
from .frames import Box, FramePairer, crop, stamp_key, usable_boxes
from .health import Health
from .settings import PerceptionConfig, PerceptionSettings, model_views_per_object, track_policy
from .stats import engine_stats
from .types import EnrollAnswer, ObjectResult, QueryAnswer, QueryRequest, RequestError
from .worker import EncodeJob, EncodeWorker, WarmJob, next_sequence


class Perception:
    """The engine. Build it with ``open_perception(config, settings)`` (loads the files) or directly
    from a model and optional bank, labels and clouds (tests, scripts)."""

    def __init__(
        self,
        model: Any,
        config: PerceptionConfig | None = None,
        settings: PerceptionSettings | None = None,
        *,
        bank: EmbeddingBank | None = None,
        labels: LabelSet | None = None,
        clouds: TrackClouds | None = None,
        on_results: Callable[[list[ObjectResult]], None] | None = None,
        clock: Callable[[], Stamp] | None = None,
    ) -> None:
        self.config, self.model = config or PerceptionConfig(), model
        self.settings = (settings or PerceptionSettings()).changed(self.config.max_views, model_views_per_object(model))
        self.clouds, self.labels = clouds, labels
        self.on_results = on_results
        # ROS time (the node's clock: sim time under use_sim_time) for unstamped views and "the last N seconds".
        self.clock = clock or (lambda: Stamp.from_seconds(time.time()))
        # Called with (updated objects, forgotten ids, whether everything was forgotten) after each change.
        self.on_memory_change: Callable[[list[SeenObject], list[str], bool], None] | None = None
        # Called with each paired frame and its boxes (the node's annotated output).
        self.frame_listener: Callable[[Header, np.ndarray, list[Box]], None] | None = None
        self.identity: WeightsIdentity = model.identity
        # Fused embeddings live in a space of their own: a memory made with another fusion is refused.
        self.embedding_identity = self.identity.fused(clouds.check_space(model)) if clouds else self.identity
        if labels is not None:
            labels.embeddings(model)  # computed (and kept by the label set) now, not in the first batch
        # enrolled names beside the memory's database (memory_path: its folder, or the .db file itself)
        folder = database_path(self.config.memory_path).parent if self.config.memory_path else None
        self.enrolled = EnrolledObjects(model.embed_dim, self.embedding_identity, folder, bank_weights=model)
        self.bank = self.enrolled.into(bank)
        self.memory = self._open_memory()
        self.buffer = TrackBuffer(track_policy(self.config, self.settings))
        self.pairer = FramePairer()
        self.health = Health()
        self.captions: OrderedDict[str, tuple[str, float]] = OrderedDict()  # track -> best (name, score)
        self.query_texts = requests.QueryTexts()
        self._forgotten: dict[str, int] = {}  # track -> job sequence number at which it was forgotten
        self._reset_at = 0  # sequence number of the last forget-all
        self._lock = threading.RLock()
        self._bank_lock = threading.Lock()
        c = self.config
        self.view_cache = (
            ViewTokenCache(model, c.view_cache_mb * 2**20, c.view_cache_storage) if c.view_cache_mb else None
        )
        warm = self._warm_views if self.view_cache else None
        self.worker = EncodeWorker(
            self._encode, self._deliver, queue_size=c.queue_size, max_batch=c.max_batch, warm=warm
        )
        self.worker.on_failure = lambda exc: self.health.problem("failed encoder batches", str(exc))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Encode on the worker's own thread (``run_worker`` runs it on the caller's instead)."""
        self.worker.start()

    def run_worker(self) -> None:
        self.worker.run()

    def close(self) -> None:
        """Finish the batch in progress and drop the queue. The memory needs no saving: it is written through."""
        self.worker.stop()
        with self._lock:
            self.memory.close()

    def _open_memory(self) -> ObjectMemory:
        c = self.config
        return ObjectMemory(
            self.model.embed_dim,
            c.max_objects,
            self.embedding_identity,
            path=c.memory_path or None,
            max_sightings=c.max_sightings,
            sync=c.memory_sync,
        )

    def checked_settings(self, **changes: Any) -> PerceptionSettings:
        """The settings with ``changes``, checked together and with the model (ValueError names the problem)."""
        return self.settings.changed(self.config.max_views, model_views_per_object(self.model), **changes)

    def update_settings(self, **changes: Any) -> PerceptionSettings:
        """Apply changed settings at once, checked together (ValueError names the problem; nothing changes)."""
        new = self.checked_settings(**changes)
        with self._lock:
            self.settings = new
            self.buffer.policy = track_policy(self.config, new)
        self.tick()  # a lower min_views or timeout may make tracks due now
        return new

    @property
    def tick_period(self) -> float:
        """How often ``tick`` should run: tracks gone quiet are encoded at most a tenth of timeout_s late."""
        return min(0.5, max(0.05, self.settings.timeout_s / 10))

    # ------------------------------------------------------------------ inputs
    def add_view(
        self,
        track_id: str,
        view: np.ndarray,
        header: Header | None = None,
        pose: Pose | None = None,
        ended: bool = False,
    ) -> bool:
        """Offer one view (H, W, 3 uint8) of a track; returns whether it was kept. ValueError for bad input."""
        if not track_id:
            raise ValueError("empty track_id")
        waiting = self.worker.queued(track_id)
        with self._lock:
            kept = self.buffer.add(
                track_id, view, time.monotonic(), stamp=header or Header(), pose=pose, waiting=waiting
            )
            if ended:
                self.buffer.end(track_id)
        self._schedule([track_id])  # a track that just became due goes to the encoder now, not at the next tick
        if kept:
            self._warm([track_id])
        return kept

    def add_frame(self, header: Header, rgb: np.ndarray) -> list[str]:
        """A full camera frame; its tracked boxes may come before or after it. Returns problems with boxes.
        The frame is kept by reference until its boxes come (the node's frames are its messages' own
        memory): a caller that reuses one buffer for every frame passes a copy."""
        with self._lock:
            waiting = self.pairer.add_frame(stamp_key(header), rgb)
        return self._add_crops(header, rgb, *waiting) if waiting is not None else []

    def add_detections(self, header: Header, boxes: list[Box], ended: list[str]) -> list[str]:
        with self._lock:
            frame = self.pairer.add_boxes(stamp_key(header), (boxes, ended))
        return self._add_crops(header, frame, boxes, ended) if frame is not None else []

    def _add_crops(self, header: Header, rgb: np.ndarray, boxes: list[Box], ended: list[str]) -> list[str]:
        boxes, problems = usable_boxes(boxes)  # a bad box is dropped alone: the rest of the frame counts
        for problem in problems:
            self.health.bad_input(problem)
        if self.frame_listener is not None:  # before buffering: captions are what was known when the frame came
            try:
                self.frame_listener(header, rgb, boxes)
            except Exception as exc:  # drawing must never cost the frame its views
                self.health.problem("annotated images failed", str(exc))
        now = time.monotonic()
        for box in boxes:
            try:
                view = crop(rgb, box)  # a slice of the frame: the buffer keeps a copy
                waiting = self.worker.queued(box.track_id)
                with self._lock:
                    self.buffer.add(box.track_id, view, now, stamp=header, waiting=waiting)
            except ValueError as exc:
                problems.append(str(exc))
                self.health.bad_input(str(exc))
        with self._lock:
            for track_id in ended:
                self.buffer.end(track_id)
        self._schedule([box.track_id for box in boxes] + ended)
        self._warm([box.track_id for box in boxes])
        return problems

    def add_cloud(self, track_id: str, points: np.ndarray, colours: np.ndarray, header: Header | None = None) -> None:
        """A track's point cloud (needs a GS encoder): the track is encoded at once, fused with its views."""
        if self.clouds is None:
            raise ValueError("point clouds need a GS encoder (gs_encoder)")
        cloud = self.clouds.add(track_id, points, colours)
        with self._lock:
            track = self.buffer.get(track_id)
            views, pose = (list(track.views), track.pose) if track is not None else ([], None)
            keys = list(track.keys) if track is not None else None
            self._submit(EncodeJob(track_id, views, header=header or Header(), pose=pose, points=cloud, keys=keys))

    def tick(self) -> None:
        """Encode tracks that went quiet for timeout_s, and let old ones go; call every ``tick_period``."""
        self._schedule(None)

    def _schedule(self, track_ids: list[str] | None) -> None:
        with self._lock:
            due = self.buffer.due(time.monotonic(), track_ids)
            jobs = [
                EncodeJob(
                    t.track_id,
                    list(t.views),
                    header=t.last_stamp or Header(),
                    pose=t.pose,
                    arrived=t.last_seen,
                    points=self.clouds.get(t.track_id) if self.clouds is not None else None,
                    first=t.first_stamp,
                    keys=list(t.keys),
                )
                for t in due
            ]
            gone = self.buffer.take_removed()
            if gone:  # their warm jobs go; their queued encodes still deliver what was seen
                self.worker.discard(gone, encodes=False)
            for job in jobs:  # under the lock: a forget cannot fall between a job's number and its queueing
                self._submit(job)
        if gone:
            self._forget_caches(gone)

    def _forget_caches(self, track_ids: list[str] | None) -> None:
        """The tracks' cached tokens and clouds (all when None): a track id used again starts afresh."""
        for cache in (self.view_cache, self.clouds):
            if cache is not None:
                cache.forget(track_ids)

    def _warm(self, track_ids: list[str]) -> None:
        """An idle encoder runs the tracks' new views through the per-view blocks ahead of their encode."""
        if self.view_cache is None:
            return
        with self._lock:
            tracks = [t for t in map(self.buffer.get, dict.fromkeys(track_ids)) if t is not None and t.views]
            for track in tracks:
                self.worker.submit_warm(WarmJob(track.track_id, list(track.keys), list(track.views)))

    def _submit(self, job: EncodeJob) -> None:
        if not self.worker.submit(job):
            self.health.problem("encode jobs dropped (queue full)", "the encoder is slower than the input")

    # ------------------------------------------------------------------ encoder thread
    def _encode(self, jobs: list[EncodeJob]) -> np.ndarray:
        if self.clouds is not None:
            return self.clouds.encode(jobs, self._encode_views)
        return self._encode_views(jobs)

    def _encode_views(self, jobs: list[EncodeJob]) -> np.ndarray:
        """Tracked views through the view cache (each view's per-view blocks once); others in full."""
        use_cache = [self.view_cache is not None and job.keys is not None for job in jobs]
        cached = [i for i, use in enumerate(use_cache) if use]
        full = [i for i, use in enumerate(use_cache) if not use]
        out = np.empty((len(jobs), self.model.embed_dim), np.float32)
        if cached:
            parts = [(jobs[i].track_id, jobs[i].keys, jobs[i].views) for i in cached]
            prune = not any(jobs[i].request for i in cached)  # a request's snapshot must not drop newer tokens
            out[cached] = self.view_cache.encode(parts, prune=prune).cpu().numpy()
            self._drop_departed([jobs[i].track_id for i in cached])
        if full:
            out[full] = self.model.encode_views([jobs[i].views for i in full], batch_size=len(full)).cpu().numpy()
        return out

    def _warm_views(self, job: WarmJob) -> None:
        self.view_cache.warm(job.track_id, job.keys, job.views)
        self._drop_departed([job.track_id])

    def _drop_departed(self, track_ids: list[str]) -> None:
        """What was just cached for tracks that left the buffer meanwhile goes again: nothing else would."""
        with self._lock:
            departed = [track_id for track_id in track_ids if track_id not in self.buffer]
        if departed:
            self._forget_caches(departed)

    def _deliver(self, jobs: list[EncodeJob], embeddings: np.ndarray) -> None:
        settings = self.settings
        with self._bank_lock:
            has_bank = self.bank is not None and len(self.bank) > 0
            bank_matches = self.bank.search(embeddings, settings.k_matches) if has_bank else None
        labels = self.labels.classify(self.model, embeddings, settings.k_matches) if self.labels else None
        results, batch = [], []
        with self._lock:  # memory first, committed: whoever hears the results can query them, even after a crash
            for i, (job, vector) in enumerate(zip(jobs, embeddings, strict=True)):
                if job.seq <= max(self._reset_at, self._forgotten.get(job.track_id, 0)):
                    self.health.count("results discarded (track forgotten meanwhile)")
                    continue
                result = ObjectResult(
                    job.track_id,
                    job.header,
                    len(job.views),
                    0 if job.points is None else len(job.points[0]),
                    vector.astype(np.float32),
                    self.embedding_identity.id if job.points is not None else self.identity.id,
                    job.pose,
                    bank_matches[i] if bank_matches is not None else [],
                    labels[i] if labels is not None else [],
                    settings.confidence_threshold,
                )
                best = result.best()
                result.confident = best is not None and best[1] >= settings.confidence_threshold
                if best is not None:
                    self.captions[job.track_id] = best
                    self.captions.move_to_end(job.track_id)
                    while len(self.captions) > self.config.max_tracks:
                        self.captions.popitem(last=False)
                stamp = job.header.stamp if not job.header.stamp.is_zero else self.clock()
                first = job.first.stamp if job.first is not None and not job.first.stamp.is_zero else stamp
                names = _best_names(result)
                batch.append((Sighting(job.track_id, stamp, len(job.views), job.header.frame_id, job.pose, names,
                                       min(first, stamp)), vector))  # fmt: skip
                results.append(result)
            changed, evicted = self.memory.record(batch) if batch else ([], [])
        if batch and self.on_memory_change is not None:
            self.on_memory_change(changed, evicted, False)
        if results and self.on_results is not None:
            self.on_results(results)

    # ------------------------------------------------------------------ services
    def query(self, request: QueryRequest) -> QueryAnswer:
        """Seen objects and/or bank objects ranked against a text (RequestError for a bad request)."""
        return requests.query(self, request)

    def enroll(
        self, name: str, category: str = "", track_id: str = "", images: list[np.ndarray] | None = None
    ) -> EnrollAnswer:
        """Name an object (a tracked one's current views, or given images) so the bank recognises it."""
        return requests.enroll(self, name, category, track_id, images or [])

    def forget(
        self,
        track_ids: Iterable[str] = (),
        *,
        all: bool = False,
        enrolled_ids: Iterable[str] = (),
        older_than: Stamp | None = None,
    ) -> int:
        """Forget seen objects (all of them with ``all``: a reset; or those last seen before ``older_than``)
        and enrolled names; returns how many. Work queued or in flight for a forgotten track is dropped.
        """
        ids = list(dict.fromkeys(track_ids))
        ids = None if all or (older_than is not None and not ids) else ids  # older_than alone: of all objects
        with self._lock:
            if older_than is not None:  # the objects last seen before then, of those asked for
                ids = self.memory.forget(ids, older_than=older_than)
            marker = next_sequence()  # every job made before this has a smaller number
            if ids is None:
                self._reset_at, self._forgotten = marker, {}
            else:
                self._forgotten.update(dict.fromkeys(ids, marker))
            oldest = self.worker.oldest_outstanding()
            self._forgotten = {t: s for t, s in self._forgotten.items() if oldest is not None and s >= oldest}
            count = len(ids) if older_than is not None else len(self.memory.forget(ids))  # forgotten above
            self.buffer.forget(ids)
            removed = self.buffer.take_removed()  # the forgotten ones, and any other track that just left
            self.worker.discard(ids)
            for track_id in list(self.captions) if ids is None else ids:
                self.captions.pop(track_id, None)
        self._forget_caches(None if ids is None else [*ids, *removed])
        if self.on_memory_change is not None and (count or ids is None):
            self.on_memory_change([], ids or [], ids is None)
        enrolled = list(dict.fromkeys(enrolled_ids))
        if enrolled:
            with self._bank_lock:
                count += self.enrolled.remove(self.bank, enrolled)
                if self.bank is not None:  # other bank rows are hidden too, until a restart
                    count += self.bank.remove([i for i in enrolled if i in self.bank])
        return count

    def check_image_count(self, count: int) -> None:
        limit = self.settings.max_enroll_images
        if count > limit:
            raise RequestError(f"{count} images, at most max_enroll_images = {limit} per request")

    def remembered(self) -> list[SeenObject]:
        """Every remembered object, least recently seen first."""
        with self._lock:
            return self.memory.objects()

    def captions_for(self, track_ids: Iterable[str]) -> dict[str, tuple[str, float]]:
        """The best (name, score) known of each of these tracks, for drawing."""
        with self._lock:
            return {t: self.captions[t] for t in track_ids if t in self.captions}

    # ------------------------------------------------------------------ diagnostics
    def stats(self) -> list[tuple[str, Any]]:
        """Counters with names a user understands, for /diagnostics."""
        return engine_stats(self)


def _best_names(result: ObjectResult, count: int = 3) -> list[tuple[str, float]]:
    """The best bank and label matches of a result, as (name, score), best first."""
    found = [(m.name or m.id, round(m.score, 4)) for m in result.bank_matches[:count]]
    found += [(label, round(score, 4)) for label, score in result.label_matches[:count]]
    return sorted(found, key=lambda item: -item[1])[:count]
