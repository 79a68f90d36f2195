"""The encode worker's queue of warm jobs (a track's views run through the per-view blocks while the
encoder is idle): they never delay or replace an encode, and a failing one loses nothing."""

from __future__ import annotations

import threading
import time

import numpy as np

from ddclip_core.perception.worker import EncodeJob, EncodeWorker, WarmJob


def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_warm_jobs_run_only_when_no_encode_waits_and_an_encode_takes_their_place():
    order: list[str] = []
    gate = threading.Event()

    def encode(jobs):
        gate.wait(30)
        order.extend(f"encode {job.track_id}" for job in jobs)
        return np.zeros((len(jobs), 4), np.float32)

    def warm(job):
        if job.track_id == "bad":
            raise RuntimeError("no tokens today")
        order.append(f"warm {job.track_id}")

    worker = EncodeWorker(encode, lambda jobs, embeddings: None, max_batch=1, warm=warm)
    view = np.zeros((8, 8, 3), np.uint8)
    worker.start()
    worker.submit(EncodeJob("busy", [view]))
    wait_for(lambda: worker.depth == 0)  # "busy" is in the encoder, held at the gate
    worker.submit_warm(WarmJob("a", [1], [view]))
    worker.submit_warm(WarmJob("b", [2], [view]))
    worker.submit_warm(WarmJob("c", [3], [view]))
    worker.submit_warm(WarmJob("bad", [4], [view]))
    worker.submit(EncodeJob("b", [view, view]))  # b's encode runs its views in full: its warm job goes
    worker.submit_warm(WarmJob("b", [2, 5], [view, view]))  # and none is queued while its encode waits
    worker.discard(["c"])  # forgotten: its warm job goes too
    gate.set()
    wait_for(lambda: worker.stats.failed_warm_jobs == 1 and "warm a" in order)
    assert order == ["encode busy", "encode b", "warm a"]  # encodes first, warm jobs after, in order
    worker.submit(EncodeJob("after", [view]))  # the worker runs on after a failed warm job
    wait_for(lambda: "encode after" in order)
    worker.stop()


def test_a_worker_without_a_warm_function_ignores_warm_jobs():
    worker = EncodeWorker(lambda jobs: np.zeros((len(jobs), 4), np.float32), lambda jobs, embeddings: None)
    worker.submit_warm(WarmJob("a", [1], [np.zeros((8, 8, 3), np.uint8)]))
    assert worker._warm_jobs == {}
