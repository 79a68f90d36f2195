"""One inference thread fed by a bounded queue: callbacks never wait for the model.

Jobs of several tracks are batched into one forward pass (objects with different view counts go
through the encoder together). A newer job for a track replaces its queued older one and keeps its
place in the queue (a track whose views keep coming is not sent to the back); when the queue is full
the oldest job is dropped and counted. ``discard`` takes queued jobs back (a track was
forgotten). Every job carries a sequence number, so whoever delivers results can tell whether a
job was submitted before or after something happened to its track. When no encode job waits, the
worker runs warm jobs: a track's new views through the per-view blocks (the view cache) ahead of its
encode, so that the encode after a track's last view runs only the cross-view blocks on most views.
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
    request: bool = False  # a request's encode (enrolment) beside the encoder: its keys may be stale


@dataclass
class WarmJob:
    """A track's kept views, whose per-view tokens an idle encoder computes ahead of its encode."""

    track_id: str
    keys: list[int]
    views: list[np.ndarray]
    submitted: float = field(default_factory=time.monotonic)


# A warm job waits this long for the track's next view, which replaces it: a burst of views (or the view
# that makes the track due, whose encode then takes its place) must not find the encoder busy warming
# its first view; views at a camera's pace (30 Hz: 33 ms) are each run ahead as they come.
WARM_DELAY_S = 0.01


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
    failed_warm_jobs: int = 0
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
        warm: Callable[[WarmJob], object] | None = None,
    ) -> None:
        if queue_size < 1 or max_batch < 1:
            raise ValueError("queue_size and max_batch must be >= 1")
        self._encode, self._deliver, self._warm = encode, deliver, warm
        self.queue_size, self.max_batch = queue_size, max_batch
        self._jobs: OrderedDict[str, EncodeJob] = OrderedDict()
        self._warm_jobs: OrderedDict[str, WarmJob] = OrderedDict()  # run only when no encode job waits
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
            self._warm_jobs.clear()
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
            self._warm_jobs.pop(job.track_id, None)  # the encode runs its views through every block anyway
            self._ready.notify()
            return accepted

    def submit_warm(self, job: WarmJob) -> None:
        """Queue per-view work for an idle encoder: replaces the track's older one; the oldest goes when
        the queue is full; nothing when the track's encode is already queued."""
        with self._ready:
            if self._warm is None or self._stop or job.track_id in self._jobs:
                return
            self._warm_jobs.pop(job.track_id, None)
            self._warm_jobs[job.track_id] = job
            while len(self._warm_jobs) > self.queue_size:
                self._warm_jobs.popitem(last=False)
            self._ready.notify()

    def queued(self, track_id: str) -> bool:
        """Whether a job of this track waits in the queue (taken jobs are not queued)."""
        with self._ready:
            return track_id in self._jobs

    def discard(self, track_ids: Iterable[str] | None = None, *, encodes: bool = True) -> int:
        """Take queued jobs of these tracks (all when None) back; returns how many encode jobs.
        encodes=False: their warm jobs only."""
        with self._ready:
            ids = list(self._jobs) if track_ids is None else [t for t in track_ids if t in self._jobs]
            ids = ids if encodes else []
            for track_id in ids:
                del self._jobs[track_id]
            for track_id in list(self._warm_jobs) if track_ids is None else track_ids:
                self._warm_jobs.pop(track_id, None)
            self.stats.discarded_jobs += len(ids)
            return len(ids)

    def _take_batch(self) -> list[EncodeJob]:
        with self._ready:
            while not self._jobs and not self._stop:
                wait = self._warm_wait()
                if wait == 0.0:
                    break
                self._ready.wait(0.5 if wait is None else min(wait, 0.5))
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
                self._run_warm_job()
                continue
            start, embeddings = time.monotonic(), None
            try:
                embeddings = self._encode(batch)
                self.stats.last_encode_ms = (time.monotonic() - start) * 1e3
                self._deliver(batch, embeddings)
            except KeyboardInterrupt:  # Ctrl-C on the thread running the encoder (the node's main thread):
                if embeddings is None:  # finish the encode it cut, as a stop does (a second Ctrl-C ends it);
                    try:  # one cut in delivery is not redone: no doubles
                        self._deliver(batch, self._encode(batch))
                    except Exception:  # the interrupt, not this, is what ends the run
                        log.exception("finishing the interrupted batch of %d track(s) failed", len(batch))
                raise
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

    def _run_warm_job(self) -> None:
        """One queued warm job, if no encode job waits: idle time only."""
        with self._ready:
            if self._jobs or self._stop or self._warm_wait() != 0.0:
                return
            job = self._warm_jobs.popitem(last=False)[1]
        try:
            self._warm(job)
        except Exception:  # the track's encode will run its views in full: nothing is lost
            self.stats.failed_warm_jobs += 1
            log.exception("running the views of track %r ahead of its encode failed", job.track_id)

    def _warm_wait(self) -> float | None:
        """Seconds until the oldest warm job may run (0.0: now); None without warm jobs (lock held)."""
        if not self._warm_jobs:
            return None
        oldest = next(iter(self._warm_jobs.values()))
        return max(0.0, oldest.submitted + WARM_DELAY_S - time.monotonic())
