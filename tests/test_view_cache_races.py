"""The view cache under the engine's threads: a forget, an eviction or a departure that lands while the
encoder runs never crashes a batch, never brings a gone track's tokens back, and leaves nothing behind
that the byte count does not see."""

from __future__ import annotations

import threading

import torch

from ddclip_core.perception import Perception, PerceptionConfig, PerceptionSettings
from ddclip_core.perception.worker import EncodeJob, WarmJob
from ddclip_core.view_cache import ViewTokenCache
from tests.conftest import random_views


def _forget_during_view_tokens(model, cache, object_id):
    view_tokens = model.view_tokens

    def forgotten_meanwhile(batch):  # the services thread forgets while the encoder runs the model
        cache.forget([object_id])
        return view_tokens(batch)

    model.view_tokens = forgotten_meanwhile


def test_a_forget_during_an_encode_neither_fails_it_nor_brings_the_tokens_back(tiny_model):
    views = list(random_views(3, size=64, seed=1))
    cache = ViewTokenCache(tiny_model, storage="fp32")
    cache.encode([("a", [0, 1], views[:2])])
    _forget_during_view_tokens(tiny_model, cache, "a")
    both = cache.encode([("a", [0, 1, 2], views), ("b", [0], views[:1])])  # a: 2 hits and 1 miss
    del tiny_model.view_tokens
    expected = tiny_model.encode_views([views, views[:1]])
    torch.testing.assert_close(both, expected, atol=1e-5, rtol=0)  # before: KeyError, the batch lost
    assert "a" not in cache._objects and cache.views == 1  # b's token only
    _forget_during_view_tokens(tiny_model, cache, "c")
    cache.encode([("c", [0, 1], views[:2])])  # all misses: before, stored again after the forget
    assert "c" not in cache._objects and cache.nbytes == sum(t.nbytes for t in cache._objects["b"].values())


def test_only_the_objects_forgotten_meanwhile_lose_their_tokens(tiny_model):
    views = list(random_views(2, size=64, seed=7))
    cache = ViewTokenCache(tiny_model, storage="fp32")
    _forget_during_view_tokens(tiny_model, cache, "second")
    cache.encode([("first", [0], views[:1]), ("second", [0], views[1:])])  # both new, one forgotten meanwhile
    assert list(cache._objects) == ["first"]
    del tiny_model.view_tokens
    cache.forget(["nobody"])  # a forget while nothing runs the model leaves no record behind
    assert cache._forgotten_at == {} and cache._running == 0


def test_tokens_computed_before_the_model_changed_are_not_kept(tiny_model):
    """A run that started under the old weights finishes after another call saw the new ones: its tokens
    are used by its own call but not kept, so no later embedding mixes the two models."""
    views = list(random_views(3, size=64, seed=4))
    cache = ViewTokenCache(tiny_model, storage="fp32")
    view_tokens = tiny_model.view_tokens

    def changed_meanwhile(batch):
        tokens = view_tokens(batch)  # under the old weights
        del tiny_model.view_tokens
        with torch.no_grad():
            tiny_model.clip.visual.proj.mul_(2.0)  # a training step elsewhere
            tiny_model.clip.visual.transformer.resblocks[0].attn.in_proj_weight.mul_(0.5)
        cache.encode([("other", [0], views[2:])])  # sees the new weights
        return tokens

    tiny_model.view_tokens = changed_meanwhile
    cache.encode([("a", [0, 1], views[:2])])
    assert "a" not in cache._objects and list(cache._objects) == ["other"]
    torch.testing.assert_close(
        cache.encode([("a", [0, 1], views[:2])]), tiny_model.encode_views(views[:2]), atol=1e-5, rtol=0
    )


def test_cached_tokens_do_not_hold_their_whole_batch(tiny_model):
    cache = ViewTokenCache(tiny_model, storage="fp32")
    cache.encode([("a", [0, 1, 2], list(random_views(3, size=64, seed=2)))])
    cache.warm("b", [0, 1], list(random_views(2, size=64, seed=3)))
    for entries in cache._objects.values():
        for tokens in entries.values():  # before: a view of the batch, which kept all of it alive
            assert tokens.untyped_storage().nbytes() == tokens.nbytes


def _engine(model, **config):
    settings = PerceptionSettings(min_views=8, timeout_s=100.0)
    return Perception(model, PerceptionConfig(view_cache_storage="fp32", **config), settings)


def test_work_for_a_track_that_left_the_buffer_keeps_no_tokens(tiny_model):
    engine = _engine(tiny_model, max_tracks=2)
    views = list(random_views(3, size=64, seed=4))
    engine.add_view("a", views[0])  # queues a warm job for a
    queued = WarmJob("a", list(engine.buffer.get("a").keys), [views[0]])
    engine.add_view("b", views[1])
    engine.add_view("c", views[2])  # a leaves the buffer (max_tracks=2)
    assert "a" not in engine.worker._warm_jobs  # its queued warm job went with it
    engine._warm_views(queued)  # one the worker had already taken
    engine._encode([EncodeJob("a", [views[0]], keys=list(queued.keys))])  # an encode queued before it left
    assert "a" not in engine.view_cache._objects and engine.view_cache.views == 0
    engine._warm_views(WarmJob("b", list(engine.buffer.get("b").keys), [views[1]]))
    assert engine.view_cache.views == 1  # a track still in the buffer keeps them


def test_a_forget_keeps_the_removals_of_other_tracks_for_the_cache(tiny_model):
    engine = _engine(tiny_model)
    view = random_views(1, size=64, seed=5)[0]
    engine.add_view("x", view)
    engine.view_cache.warm("x", list(engine.buffer.get("x").keys), [view])
    assert engine.view_cache.views == 1
    with engine._lock:  # an input thread has just pushed x out, and not yet reached its _schedule
        engine.buffer.forget(["x"])
    engine.forget(["other"])  # before: took x's removal and dropped it, so x's tokens were never forgotten
    assert engine.view_cache.views == 0


def test_a_forget_between_a_jobs_number_and_its_queueing_is_honoured(tiny_model):
    engine = Perception(tiny_model, PerceptionConfig(), PerceptionSettings(min_views=1))
    results: list = []
    engine.on_results = results.extend
    submit, forgetting = engine.worker.submit, []

    def racing_submit(job):  # the services thread forgets the track just before its job is queued
        forgetting.append(threading.Thread(target=engine.forget, args=(["a"],)))
        forgetting[0].start()
        forgetting[0].join(timeout=0.5)  # now: it waits for the engine's lock and runs after the queueing
        return submit(job)

    engine.worker.submit = racing_submit
    engine.add_view("a", random_views(1, size=64, seed=6)[0])
    engine.worker.submit = submit
    forgetting[0].join()
    if engine.worker.depth:  # before: still queued, and nothing recorded that a was forgotten
        batch = engine.worker._take_batch()
        engine._deliver(batch, engine._encode(batch))
    assert results == [] and engine.remembered() == []


def test_a_track_that_leaves_takes_its_cloud_so_a_reused_id_starts_afresh():
    import numpy as np

    from ddclip_core.gaussians import CloudEmbedder, GSCLIPEncoder, GSEncoderConfig
    from ddclip_core.perception.clouds import TrackClouds
    from tests.conftest import make_tiny

    model = make_tiny(seed=3)
    clouds = TrackClouds(CloudEmbedder(GSCLIPEncoder(GSEncoderConfig.tiny(embed_dim=32)).eval(), 300), 0.5, 10)
    config = PerceptionConfig(max_tracks=1)
    engine = Perception(model, config, PerceptionSettings(min_views=8, timeout_s=100.0), clouds=clouds)
    rng = np.random.default_rng(0)
    points, colours = rng.normal(size=(200, 3)).astype(np.float32), rng.uniform(size=(200, 3)).astype(np.float32)
    engine.add_view("3", random_views(1, size=64, seed=1)[0])
    clouds.add("3", points, colours)  # the track's cloud (as add_cloud stores it)
    engine.add_view("4", random_views(1, size=64, seed=2)[0])  # "3" leaves the buffer (max_tracks=1)
    assert clouds.get("3") is None  # before: kept, and fused into the next track the tracker called "3"
