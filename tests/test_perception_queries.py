"""Queries over the object memory through the engine (no DDS): by text, example images or a track, with
time filters on the engine's clock (ROS time), place filters across frames, and bad requests refused."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ddclip_core import load_model
from ddclip_core.perception import Perception, PerceptionConfig, PerceptionSettings, QueryRequest, RequestError
from ddclip_core.stamped import Header, Pose, Stamp
from tests.conftest import published_tiny, random_views

OBJECTS = {  # track: (seed of its views, stamp second, pose frame, x)
    "mug": (1, 100, "map", 0.5),
    "couch": (2, 160, "map", 4.0),
    "duck": (3, 170, "odom", 0.2),
    "lamp": (4, 175, "", 0.0),
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    model = load_model(published_tiny(tmp_path_factory.mktemp("w")), device="cpu")
    now = [Stamp(180)]  # the node's ROS clock (sim time under use_sim_time)
    engine = Perception(model, PerceptionConfig(), PerceptionSettings(min_views=3), clock=lambda: now[0])
    results: list = []
    engine.on_results = results.extend
    engine.start()
    for track, (seed, sec, frame, x) in OBJECTS.items():
        pose = Pose(frame, Stamp(sec), (x, 0.0, 0.0)) if frame else None
        for i, view in enumerate(random_views(3, size=96, seed=seed)):
            engine.add_view(track, view, Header("camera", Stamp(sec, i)), pose, ended=i == 2)
    deadline = time.monotonic() + 60
    while len(engine.memory) < len(OBJECTS):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield engine
    engine.close()


def tracks(engine, **request) -> list[str]:
    return [hit.track_id for hit in engine.query(QueryRequest(**{"text": "a mug", "k": 10, **request})).hits]


def test_time_filters_on_ros_time(engine):
    assert set(tracks(engine, within_last_s=25.0)) == {"couch", "duck", "lamp"}  # the clock says 180
    assert set(tracks(engine, seen_after=Stamp(150), seen_before=Stamp(171))) == {"couch", "duck"}
    assert tracks(engine, seen_before=Stamp(120)) == ["mug"]


def test_place_filters_across_two_frames_say_what_they_left_out(engine):
    answer = engine.query(QueryRequest("a mug", k=10, near_frame="map", near=(0.0, 0.0, 0.0), radius=1.0))
    assert [h.track_id for h in answer.hits] == ["mug"]
    assert (answer.left_out_other_frame, answer.left_out_no_pose) == (1, 1)
    assert "1 object(s) left out: posed in another frame (odom)" in answer.message
    assert "1 object(s) left out: no pose known" in answer.message
    (hit,) = answer.hits
    assert hit.pose.frame_id == "map" and hit.pose.position == (0.5, 0.0, 0.0) and hit.sightings == 1
    assert hit.first_seen == Stamp(100, 0) and hit.last_seen == Stamp(100, 2)


def test_query_by_example_images_and_by_track(engine):
    duck_views = tuple(random_views(3, size=96, seed=3))  # the duck's own views: it comes first
    assert tracks(engine, text="", images=duck_views)[0] == "duck"
    like = tracks(engine, text="", like_track_id="couch")
    assert "couch" not in like and set(like) == {"mug", "duck", "lamp"}
    assert tracks(engine, min_views=3, name_contains="DUC") == ["duck"]


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"near_frame": "base_link", "near": (0.0, 0.0, 0.0), "radius": 1.0}, "unknown frame 'base_link'"),
        ({"near_frame": "map", "near": (0.0, 0.0, 0.0), "radius": -1.0}, "radius must be a positive number"),
        ({"radius": 2.0}, "radius needs a point"),
        ({"near": (0.0, 0.0, 0.0), "radius": 1.0}, "near needs the frame"),
        ({"seen_after": Stamp(200), "seen_before": Stamp(100)}, "seen_after (200.000) is later than seen_before"),
        ({"within_last_s": -5.0}, "within_last_s must be >= 0"),
        ({"k": 100_000}, "k must be in 0..1000"),
        ({"text": "", "like_track_id": "nobody"}, "no remembered object 'nobody'"),
        ({"like_track_id": "mug"}, "give one of: a text, images, or like_track_id, not several"),
        ({"text": "", "images": (np.zeros((4, 4), np.uint8),)}, "image 0 is not an (H, W, 3) uint8 image"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(engine, request_fields, message):
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        engine.query(QueryRequest(**{"text": "a mug", **request_fields}))


def test_forget_older_than_is_one_call(engine):
    changes = []
    engine.on_memory_change = lambda *change: changes.append(change)
    assert engine.forget(older_than=Stamp(150)) == 1
    assert "mug" not in engine.memory and len(engine.memory) == 3 and changes == [([], ["mug"], False)]
    engine.on_memory_change = None


def test_a_query_text_asked_again_is_not_encoded_again(engine):
    """The second ask of a text answers from the kept embedding, the same answer; the kept ones are
    bounded, most recently asked first."""
    calls = []
    encode_text = engine.model.encode_text
    engine.model.encode_text = lambda text: calls.append(text) or encode_text(text)
    try:
        first = engine.query(QueryRequest(text="a lamp on a desk", k=10))
        again = engine.query(QueryRequest(text="  a lamp on a desk ", k=10))  # the text the request strips
        assert calls == ["a lamp on a desk"]
        assert [(h.track_id, h.score) for h in again.hits] == [(h.track_id, h.score) for h in first.hits]
        engine.query_texts.size = 2
        for text in ("a chair", "a lamp on a desk", "a sofa", "a lamp on a desk", "a chair"):
            engine.query(QueryRequest(text=text, k=1))
        assert calls == ["a lamp on a desk", "a chair", "a sofa", "a chair"]  # a chair had gone first
        assert dict(engine.stats())["query texts answered without the text encoder"] == engine.query_texts.hits >= 2
    finally:
        engine.model.encode_text = encode_text
        engine.query_texts.size = 256
