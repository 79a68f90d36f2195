"""The ROS-free perception engine on files in the published formats: a Lightning-layout checkpoint and a
bank imported from the released Objaverse h5 + uid map (so the bank's weights id is the published one,
not the model's). Each test names the defect it guards against; none needs DDS."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ddclip_core import EmbeddingBank, LabelSet, load_model
from ddclip_core.gaussians import CloudEmbedder, GSCLIPEncoder, GSEncoderConfig
from ddclip_core.identity import WeightsMismatchError
from ddclip_core.perception import (
    Perception,
    PerceptionConfig,
    PerceptionSettings,
    QueryRequest,
    RequestError,
    Source,
    StartupError,
    open_perception,
)
from ddclip_core.perception.clouds import TrackClouds
from ddclip_core.perception.health import Health
from ddclip_core.perception.stats import engine_stats
from ddclip_core.stamped import Header, Pose, Stamp
from tests.conftest import published_tiny, random_views, write_objaverse_release

OBJECTS = {"mug-uid": 11, "couch-uid": 12, "duck-uid": 13, "lamp-uid": 14}  # uid -> seed of its views


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, Path]:
    """The published checkpoint and an Objaverse bank imported from the released layout, embedded by a
    model object of their own (never the one a test runs)."""
    folder = tmp_path_factory.mktemp("published")
    checkpoint = published_tiny(folder)
    maker = load_model(checkpoint, device="cpu")
    vectors = maker.encode_views([random_views(4, size=96, seed=s) for s in OBJECTS.values()]).numpy()
    h5, uid_map = write_objaverse_release(folder / "release", vectors, list(OBJECTS))
    EmbeddingBank.from_objaverse(h5, uid_map).save(folder / "bank")
    return {"checkpoint": checkpoint, "bank": folder / "bank"}


class Run:
    """An engine on its worker thread, collecting results."""

    def __init__(self, published: dict[str, Path], memory: Path | None = None, **changes) -> None:
        config = PerceptionConfig(
            weights=str(published["checkpoint"]),
            device="cpu",
            bank=str(published["bank"]),
            memory_path=str(memory or ""),
            **{k: v for k, v in changes.items() if k in PerceptionConfig.__dataclass_fields__},
        )
        settings = PerceptionSettings(
            **{"min_views": 2, **{k: v for k, v in changes.items() if k in PerceptionSettings.__dataclass_fields__}}
        )
        self.results: list = []
        self.engine = open_perception(config, settings, on_results=self.results.extend)
        self.engine.start()

    def show(self, track: str, seed: int, count: int = 4, end: bool = True, **extra) -> None:
        for i, view in enumerate(random_views(count, size=96, seed=seed)):
            self.engine.add_view(track, view, ended=end and i == count - 1, **extra)

    def wait(self, condition, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out: {[(r.track_id, r.num_views) for r in self.results]}"
            time.sleep(0.02)

    def final(self, track: str, views: int = 4):
        self.wait(lambda: any(r.track_id == track and r.num_views == views for r in self.results))
        return [r for r in self.results if r.track_id == track][-1]

    def idle(self) -> None:
        self.wait(lambda: self.engine.worker.oldest_outstanding() is None)


def test_enrolling_a_seen_track_against_an_objaverse_bank_and_a_restart(published, tmp_path):
    """Defect 1: the model's published alias must be honoured by the bank, enrolled names and memory."""
    run = Run(published, tmp_path / "memory")
    assert run.engine.bank.weights_id == "published:Four_1to6F_bs1600_LT6" != run.engine.model.weights_id
    run.show("t-mug", OBJECTS["mug-uid"])
    result = run.final("t-mug")
    assert result.bank_matches[0].id == "mug-uid" and result.bank_matches[0].score > 0.999
    answer = run.engine.enroll("Ana's mug", "mug", track_id="t-mug")  # raised BankMismatchError before
    assert answer.id == "enrolled:Ana's mug"
    run.show("t-again", OBJECTS["mug-uid"])
    assert run.final("t-again").bank_matches[0].id in {"enrolled:Ana's mug", "mug-uid"}
    run.engine.close()

    again = Run(published, tmp_path / "memory")  # a restart: a new model object, the same files
    hits = again.engine.query(QueryRequest("Ana's mug", k=10, sources=Source.BOTH)).hits
    assert ("bank", "enrolled:Ana's mug") in {(h.source, h.id) for h in hits}
    seen = {h.track_id: h for h in hits if h.source == "seen"}
    assert set(seen) == {"t-mug", "t-again"} and seen["t-mug"].name == "Ana's mug"
    again.engine.close()


def test_settings_take_effect_at_once_and_are_checked_together(published):
    """Defect 3: a changed setting changes behaviour; min_views > max_views is refused, nothing changes."""
    run = Run(published, min_views=3, k_matches=5, timeout_s=100.0)
    run.show("two", 21, count=2, end=False)
    time.sleep(0.3)
    assert not run.results  # 2 views < min_views 3
    run.engine.update_settings(min_views=2, k_matches=3)
    assert run.final("two", 2) and len(run.results[-1].bank_matches) == 3
    assert len(run.engine.query(QueryRequest("a mug", sources=Source.BANK)).hits) == 3
    with pytest.raises(ValueError, match=r"min_views \(20\) must be <= max_views \(12\)"):
        run.engine.update_settings(min_views=20)
    with pytest.raises(ValueError, match=r"k_matches must be in \[1, 1000\]"):
        run.engine.update_settings(k_matches=0)
    with pytest.raises(ValueError, match="unknown or read-only settings: max_views"):
        run.engine.update_settings(max_views=3)
    assert (run.engine.settings.min_views, run.engine.settings.k_matches) == (2, 3)
    run.engine.update_settings(timeout_s=20.0)
    assert run.engine.tick_period == 0.5 and run.engine.buffer.policy.timeout_s == 20.0
    with pytest.raises(ValueError, match=r"timeout_s must be in \[0.05, 3600\], got 0.0"):
        run.engine.update_settings(timeout_s=0.0)  # before: accepted, and every view encoded at once
    run.engine.health.problem("failed encoder batches", "a test")  # the worker counts these too
    names = [name for name, _ in engine_stats(run.engine)]
    assert len(names) == len(set(names))  # before: the worker's and the health's row, under one key
    run.engine.close()


def test_health_is_ok_until_something_is_dropped_and_recovers():
    """Defect 4: the level said "dropping" when nothing was dropped (DiagnosticStatus.OK is truthy)."""
    now = [100.0]
    health = Health(window_s=10, clock=lambda: now[0])
    assert health.status() == (True, "ok")
    health.bad_input("a view of track 'x': zero-size image (0x0)")
    ok, message = health.status()
    assert not ok and "bad input messages dropped (1 so far; latest: a view of track 'x'" in message
    now[0] += 11
    assert health.status() == (True, "ok")
    assert dict(health.counters())["bad input messages dropped"] == 1  # counters keep counting


def test_query_results_carry_the_trackers_pose_in_its_own_frame_and_stamp(published):
    """Defect 5: a pose in map came back with the camera's frame_id and without a stamp."""
    run = Run(published)
    camera = Header("camera_optical", Stamp(50, 7))
    pose = Pose("map", Stamp(49, 3), (1.0, 2.0, 0.5), (0.0, 0.0, 0.0, 1.0))
    run.show("posed", 31, header=camera, pose=pose)
    result = run.final("posed")
    assert result.pose == pose and result.header == camera
    (hit,) = run.engine.query(QueryRequest("a mug", k=1)).hits
    assert hit.pose == pose and hit.last_seen == Stamp(50, 7)
    run.engine.close()


def test_forget_all_is_a_reset_even_with_work_queued_and_in_flight(published):
    """Defect 6: jobs queued or in flight for forgotten tracks brought them back."""
    run = Run(published, max_batch=1)
    gate, entered = threading.Event(), threading.Event()
    encode = run.engine.model.embed_view_tokens  # the second half of every tracked encode (not warm jobs')

    def slow(*args, **kwargs):
        entered.set()
        gate.wait(30)
        return encode(*args, **kwargs)

    run.engine.model.embed_view_tokens = slow
    run.show("first", 41, count=2)
    assert entered.wait(30)  # "first" is in the encoder
    run.show("second", 42, count=2)  # queued behind it
    assert run.engine.worker.depth == 1
    assert run.engine.forget(all=True) == 0
    gate.set()
    run.idle()
    assert not run.results and len(run.engine.memory) == 0
    assert run.engine.worker.stats.discarded_jobs == 1
    assert dict(run.engine.stats())["results discarded (track forgotten meanwhile)"] == 1
    run.engine.model.embed_view_tokens = encode
    run.show("first", 41, count=2)  # the same id, seen anew after the reset, is a new object
    assert run.final("first", 2).track_id == "first" and len(run.engine.memory) == 1
    run.engine.close()


def test_under_overload_a_queued_track_keeps_its_place_and_its_newest_view(published):
    """Overload: views of a full track whose encode waits in the queue used to displace encoded views
    (each re-encode then ran them all) and sent the track to the back of the queue at every view."""
    run = Run(published, max_batch=1, max_views=2, timeout_s=100.0, view_cache_storage="fp32")
    gate, entered = threading.Event(), threading.Event()
    encode = run.engine.model.embed_view_tokens

    def slow(*args, **kwargs):
        entered.set()
        gate.wait(30)
        return encode(*args, **kwargs)

    run.engine.model.embed_view_tokens = slow
    run.show("busy", 40, count=2, end=False)
    assert entered.wait(30)  # the encoder is busy with "busy"
    views = list(random_views(5, size=96, seed=43))
    run.engine.add_view("a", views[0])
    run.engine.add_view("a", views[1])  # due: queued
    run.show("b", 44, count=2, end=False)  # queued behind "a"
    for view in views[2:]:  # "a" waits: each view takes the place of its newest
        assert run.engine.add_view("a", view)
    assert run.engine.worker.depth == 2 and run.engine.worker.stats.replaced_jobs == 3
    gate.set()
    run.wait(lambda: len(run.results) == 3)
    assert [r.track_id for r in run.results] == ["busy", "a", "b"]  # "a" kept its place
    run.engine.model.embed_view_tokens = encode
    expected = run.engine.model.encode_views([views[0], views[4]]).numpy()[0]
    np.testing.assert_allclose(run.results[1].embedding, expected, atol=1e-5)
    run.engine.close()


def test_fused_embeddings_name_their_fusion_and_other_fusions_are_refused(published, tmp_path):
    """Defect 7: a memory made with another fusion (or none) must be refused, not mixed."""
    model = load_model(published["checkpoint"], device="cpu")
    encoder = GSCLIPEncoder(GSEncoderConfig.tiny(embed_dim=32)).eval()
    config = PerceptionConfig(memory_path=str(tmp_path / "memory"))
    plain = Perception(model, config)
    plain.close()  # writes a memory of the views-only space
    clouds = TrackClouds(CloudEmbedder(encoder, 500), 0.5, 10)
    with pytest.raises(WeightsMismatchError, match="object memory was made with weights"):
        Perception(model, config, clouds=clouds)
    fused = Perception(model, PerceptionConfig(memory_path=str(tmp_path / "fused")), clouds=clouds)
    assert fused.embedding_identity.id == f"{model.weights_id}+gs:{encoder.weights_id}@w0.5"
    fused.close()
    other_weight = TrackClouds(CloudEmbedder(encoder, 500), 0.25, 10)
    with pytest.raises(WeightsMismatchError, match="@w0.5"):
        Perception(model, PerceptionConfig(memory_path=str(tmp_path / "fused")), clouds=other_weight)


def test_enrolment_is_bounded_downsized_and_its_failures_are_its_own(published):
    """Defect 8: enrolment had no bound, did not preprocess like tracked views, and a model failure crashed."""
    run = Run(published, max_enroll_images=2)
    seen_shapes = []
    encode = run.engine.model.encode_views
    run.engine.model.encode_views = lambda objects, **k: (
        seen_shapes.append([v.shape for v in objects[0]]) or encode(objects, **k)
    )
    with pytest.raises(RequestError, match="3 images, at most max_enroll_images = 2"):
        run.engine.enroll("big", images=list(random_views(3, size=64)))
    large = np.full((900, 600, 3), 120, np.uint8)
    assert run.engine.enroll("large", images=[large]).id == "enrolled:large"
    assert seen_shapes[-1] == [(256, 171, 3)]  # downsized as tracked views are (longer side 256)
    with pytest.raises(RequestError, match="image 0 is not an"):
        run.engine.enroll("grey", images=[np.zeros((8, 8), np.uint8)])
    run.engine.model.encode_views = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))
    with pytest.raises(RequestError, match="encoding the views to enrol failed: RuntimeError: CUDA out of memory"):
        run.engine.enroll("oom", images=[large])
    with pytest.raises(RequestError, match="no views of track 'ghost'"):
        run.engine.enroll("ghost", track_id="ghost")
    with pytest.raises(RequestError, match="empty name"):
        run.engine.enroll("  ", images=[large])
    run.engine.model.encode_views = encode
    run.show("after", 51)
    assert run.final("after")  # the engine goes on
    run.engine.close()


def test_both_sources_without_a_bank_answer_from_the_seen_objects(published):
    """Defect 9: SOURCE_BOTH without a bank failed instead of answering what it can."""
    model = load_model(published["checkpoint"], device="cpu")
    engine = Perception(model, settings=PerceptionSettings(min_views=2))
    results: list = []
    engine.on_results = results.extend
    engine.start()
    for i, view in enumerate(random_views(3, size=96, seed=61)):
        engine.add_view("seen-1", view, ended=i == 2)
    deadline = time.monotonic() + 60
    while not any(r.num_views == 3 for r in results):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    answer = engine.query(QueryRequest("a mug", k=5, sources=Source.BOTH))
    assert [h.track_id for h in answer.hits] == ["seen-1"]
    assert "no bank loaded (parameter 'bank'): answered from the seen objects only" in answer.message
    with pytest.raises(RequestError, match="no bank loaded"):
        engine.query(QueryRequest("a mug", sources=Source.BANK))
    for bad, message in ((QueryRequest(" "), "empty query text"), (QueryRequest("x", k=5000), "k must be in")):
        with pytest.raises(RequestError, match=message):
            engine.query(bad)
    with pytest.raises(RequestError, match="unknown sources 8"):
        engine.query(QueryRequest("x", sources=8))
    engine.close()


def test_label_embeddings_are_computed_once(published, tmp_path, monkeypatch):
    """Defect 11: label embeddings were read from disk for every batch."""
    monkeypatch.setenv("DDCLIP_CACHE", str(tmp_path / "cache"))
    model = load_model(published["checkpoint"], device="cpu")
    engine = Perception(model, labels=LabelSet(["mug", "couch", "duck"], templates="none"))
    reads = []
    monkeypatch.setattr(np, "load", lambda *a, **k: reads.append(a) or pytest.fail("label cache read again"))
    monkeypatch.setattr(model, "encode_text", lambda *a, **k: pytest.fail("labels encoded again"))
    engine.start()
    engine.add_view("labelled", random_views(1, size=96, seed=71)[0], ended=True)
    deadline = time.monotonic() + 60
    while len(engine.memory) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not reads
    engine.close()


def test_random_weights_are_refused_unless_asked_for(tmp_path, monkeypatch):
    """Defect 13: a robot must never publish "confident" matches from random weights by accident."""
    monkeypatch.delenv("DDCLIP_WEIGHTS", raising=False)
    monkeypatch.setenv("DDCLIP_CACHE", str(tmp_path))  # no downloaded checkpoint either
    with pytest.raises(StartupError, match="no weights: set the 'weights' parameter.*allow_random_weights:=true"):
        open_perception(PerceptionConfig(device="cpu"))


def test_startup_errors_name_the_setting(published, tmp_path):
    with pytest.raises(StartupError, match="^bank: not a ddclip bank"):
        open_perception(PerceptionConfig(weights=str(published["checkpoint"]), device="cpu", bank=str(tmp_path)))
    other = tmp_path / "other"
    EmbeddingBank(32, weights_id="someone-else").save(other)
    with pytest.raises(StartupError, match="^bank: queries come from weights .* bank was built with 'someone-else'"):
        open_perception(PerceptionConfig(weights=str(published["checkpoint"]), device="cpu", bank=str(other)))
    with pytest.raises(StartupError, match="^weights: weights file not found"):
        open_perception(PerceptionConfig(weights=str(tmp_path / "nope.ckpt"), device="cpu"))
    with pytest.raises(ValueError, match=r"max_views must be in \[1, 64\], got 100"):
        PerceptionConfig(max_views=100)
    with pytest.raises(ValueError, match="min_views must be an integer"):
        PerceptionSettings(min_views=2.5)
