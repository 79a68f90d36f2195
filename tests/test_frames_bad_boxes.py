"""A bad tracked box costs only itself: the frame's other boxes and ended tracks still count, drawing
the annotated frame cannot lose them, and Ctrl-C on the encoder's thread finishes the batch it cut."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ddclip_core.perception import Perception, PerceptionSettings
from ddclip_core.perception.frames import Box, crop
from ddclip_core.perception.worker import EncodeJob, EncodeWorker
from ddclip_core.stamped import Header, Stamp
from tests.conftest import make_tiny, random_views

BAD = [
    (Box("", 0, 0, 20, 20), "a box with an empty track_id"),
    (Box("inf", 0, 0, math.inf, 20), "not a finite number"),
    (Box("nan", math.nan, 0, 20, 20), "not a finite number"),
    (Box("swapped", 30, 0, 10, 20), "corners swapped"),
]


@pytest.mark.parametrize(("box", "problem"), BAD)
def test_crop_names_what_is_wrong_with_a_box(box, problem):
    with pytest.raises(ValueError, match=problem):  # before: OverflowError for inf, a merged "" track
        crop(np.zeros((40, 40, 3), np.uint8), box)


def test_boxes_with_numpy_coordinates_are_good_boxes():
    frame = np.zeros((40, 40, 3), np.uint8)
    for kind in (np.float32, np.int64, np.float64):
        box = Box("mug", kind(2), kind(3), kind(30), kind(33))
        assert crop(frame, box).shape == (30, 28, 3)  # a detector's array values, as they come


@pytest.mark.parametrize("drawing_fails", [False, True])
def test_a_bad_box_is_dropped_alone_even_with_annotation(drawing_fails):
    engine = Perception(make_tiny(), settings=PerceptionSettings(min_views=2, timeout_s=100.0))
    drawn = []

    def draw(header, rgb, boxes):
        drawn.append([b.track_id for b in boxes])
        if drawing_fails:
            raise RuntimeError("font missing")

    engine.frame_listener = draw
    header = Header("cam", Stamp(1, 0))
    good = Box("mug", 0, 0, 32, 32)
    engine.add_frame(header, random_views(1, size=64)[0])
    problems = engine.add_detections(header, [box for box, _ in BAD] + [good], ended=["mug"])
    assert len(problems) == len(BAD) and drawn == [["mug"]]  # before: PIL raised on the swapped box
    assert engine.buffer.get("mug") is not None and engine.buffer.get("mug").ended  # the good box and the end
    assert "" not in engine.buffer and engine.worker.depth == 1  # the ended track is queued for its encode
    counts = dict(engine.stats())
    assert counts.get("annotated images failed", 0) == (1 if drawing_fails else 0)


def test_ctrl_c_during_an_encode_finishes_the_batch_then_stops():
    delivered, calls = [], []

    def encode(jobs):
        calls.append(len(jobs))
        if len(calls) == 1:
            raise KeyboardInterrupt  # SIGINT lands on the main thread while it encodes
        return np.zeros((len(jobs), 4), np.float32)

    worker = EncodeWorker(encode, lambda jobs, embeddings: delivered.extend(j.track_id for j in jobs))
    worker.submit(EncodeJob("ended-track", [np.zeros((8, 8, 3), np.uint8)]))
    with pytest.raises(KeyboardInterrupt):
        worker.run()
    assert delivered == ["ended-track"] and calls == [1, 1]  # before: the batch was abandoned


def test_a_failure_while_finishing_the_cut_batch_does_not_hide_the_interrupt():
    calls = []

    def encode(jobs):
        calls.append(len(jobs))
        raise KeyboardInterrupt if len(calls) == 1 else RuntimeError("out of memory")

    worker = EncodeWorker(encode, lambda jobs, embeddings: None)
    worker.submit(EncodeJob("t", [np.zeros((8, 8, 3), np.uint8)]))
    with pytest.raises(KeyboardInterrupt):  # before: the RuntimeError, which a clean shutdown does not expect
        worker.run()
    assert calls == [1, 1]
