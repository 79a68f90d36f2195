"""One inference thread fed by a bounded queue: callbacks never wait for the model.

Jobs of several tracks are batched into one forward pass (objects with different view counts go
through the encoder together). A newer job for a track replaces its queued older one and keeps its
place in the queue (a track whose views keep coming is not sent to the back); when the queue is full
the oldest job is dropped and counted. ``discard`` takes queued jobs back (a track was
forgotten). Every job carries a sequence number, so whoever delivers results can tell whether a
job was submitted before or after something happened to its track.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..stamped import Header, Pose

log = logging.getLogger(__name__)
_sequence = itertools.count(1)


@dataclass
class EncodeJob:
    track_id: str
    views: list[np.ndarray]  # may be empty when the job is a point cloud only
    header: Header = field(default_factory=Header)  # camera frame and stamp of the newest view (or cloud)
    pose: Pose | None = None
    arrived: float = field(default_factory=time.monotonic)  # when the newest view arrived
    points: tuple[np.ndarray, np.ndarray] | None = None  # the track's latest cloud (points, colours), if any
    seq: int = field(default_factory=lambda: next(_sequence))
    first: Header | None = None  # the track's first view, when known (when the object was first seen)
    keys: list[int] | None = None  # the buffer's key of each view (their tokens are cached); None: no cache


def single_threaded_torch() -> None:
    """Run this thread's torch work on this thread alone, with no OpenMP team of its own: for threads beside
    the encoder's (ROS callbacks, services). An OpenMP team is per thread and lives as long as its thread;
    with more teams than cores, OpenMP stops letting idle workers spin, and every parallel region of the
    encoder then waits for its workers to wake (the encoder ran 1.3-1.6x slower in bf16, 2 cores)."""
    torch.set_num_threads(1)  # this thread's OpenMP and MKL settings (and the default of later threads)


def next_sequence() -> int:
    """A number larger than that of every job made so far."""
    return next(_sequence)


@dataclass
class WorkerStats:
    encoded_tracks: int = 0
    batches: int = 0
    dropped_jobs: int = 0
    replaced_jobs: int = 0
    discarded_jobs: int = 0
    failed_batches: int = 0
    last_batch_size: int = 0
    last_encode_ms: float = 0.0
    last_total_ms: float = 0.0  # newest view arrival -> results handed over


class EncodeWorker:
    """Runs ``encode(jobs) -> (B, D) array`` and ``deliver(jobs, embeddings)`` off-thread."""

    def __init__(
        self,
        encode: Callable[[list[EncodeJob]], np.ndarray],
        deliver: Callable[[list[EncodeJob], np.ndarray], None],
        *,
        queue_size: int = 32,
        max_batch: int = 8,
    ) -> None:
        if queue_size < 1 or max_batch < 1:
            raise ValueError("queue_size and max_batch must be >= 1")
        self._encode, self._deliver = encode, deliver
        self.queue_size, self.max_batch = queue_size, max_batch
        self._jobs: OrderedDict[str, EncodeJob] = OrderedDict()
        self._in_flight: list[EncodeJob] = []
        self._ready = threading.Condition()
        self._stop = False
        self.stats = WorkerStats()
        self.on_failure: Callable[[BaseException], None] | None = None
        self.threads = torch.get_num_threads()  # the encoder's, set on whichever thread runs it
        self._thread = threading.Thread(target=self.run, name="ddclip-encoder", daemon=True)

    def start(self) -> None:
        """Run the jobs on a thread of the worker's own (``run`` runs them on the caller's)."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in progress and drop the queued ones: shutdown must not wait for a backlog
        (launch escalates to SIGKILL after a few seconds)."""
        with self._ready:
            self._stop = True
            self.stats.dropped_jobs += len(self._jobs)
            self._jobs.clear()
            self._ready.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def depth(self) -> int:
        with self._ready:
            return len(self._jobs)

    def oldest_outstanding(self) -> int | None:
        """The smallest sequence number of a queued or in-flight job (None: nothing outstanding)."""
        with self._ready:
            seqs = [job.seq for job in (*self._jobs.values(), *self._in_flight)]
        return min(seqs) if seqs else None

    def submit(self, job: EncodeJob) -> bool:
        """Queue a job without blocking; returns False if an older job had to be dropped for it."""
        with self._ready:
            if self._stop:
                self.stats.dropped_jobs += 1
                return False
            accepted = True
            if job.track_id in self._jobs:
                self.stats.replaced_jobs += 1
            elif len(self._jobs) >= self.queue_size:
                self._jobs.popitem(last=False)
                self.stats.dropped_jobs += 1
                accepted = False
            self._jobs[job.track_id] = job
            self._ready.notify()
            return accepted

    def queued(self, track_id: str) -> bool:
        """Whether a job of this track waits in the queue (taken jobs are not queued)."""
        with self._ready:
            return track_id in self._jobs

    def discard(self, track_ids: Iterable[str] | None = None) -> int:
        """Take queued jobs of these tracks (all when None) back; returns how many."""
        with self._ready:
            ids = list(self._jobs) if track_ids is None else [t for t in track_ids if t in self._jobs]
            for track_id in ids:
                del self._jobs[track_id]
            self.stats.discarded_jobs += len(ids)
            return len(ids)

    def _take_batch(self) -> list[EncodeJob]:
        with self._ready:
            while not self._jobs and not self._stop:
                self._ready.wait(0.5)
            batch = []
            while self._jobs and len(batch) < self.max_batch:
                batch.append(self._jobs.popitem(last=False)[1])
            self._in_flight = batch
            return batch

    def run(self) -> None:
        """Encode and deliver jobs until ``stop``."""
        torch.set_num_threads(self.threads)  # a new thread may have inherited another thread's choice
        while True:
            batch = self._take_batch()
            if not batch:
                if self._stop:
                    return
                continue
            start = time.monotonic()
            try:
                embeddings = self._encode(batch)
                self.stats.last_encode_ms = (time.monotonic() - start) * 1e3
                self._deliver(batch, embeddings)
            except Exception as exc:  # one bad batch must not stop the node; it is logged and counted
                self.stats.failed_batches += 1
                log.exception("encoding a batch of %d track(s) failed", len(batch))
                if self.on_failure is not None:
                    self.on_failure(exc)
                continue
            finally:
                with self._ready:
                    self._in_flight = []
            self.stats.batches += 1
            self.stats.encoded_tracks += len(batch)
            self.stats.last_batch_size = len(batch)
            self.stats.last_total_ms = (time.monotonic() - min(job.arrived for job in batch)) * 1e3
