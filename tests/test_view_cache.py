"""Encode each view once: incremental re-encodes from cached per-view tokens equal full recomputes."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

import ddclip_core
from ddclip_core import load_model
from ddclip_core.gaussians import CloudEmbedder, GSCLIPEncoder, GSEncoderConfig
from ddclip_core.perception import Perception, PerceptionConfig, PerceptionSettings
from ddclip_core.perception.clouds import TrackClouds
from ddclip_core.view_cache import ObjectViews, ViewTokenCache
from tests.conftest import make_tiny, published_tiny, random_views


def test_incremental_equals_full_recompute_in_fp32(vit_b32):
    """Real ViT-B-32 shapes at threshold 6: 10 views cached, then 2 new ones."""
    views = list(random_views(12, seed=1))
    cache = ViewTokenCache(vit_b32, storage="fp32")
    cache.encode([("mug", list(range(10)), views[:10])])
    incremental = cache.encode([("mug", list(range(12)), views)])
    assert cache.stats.hits == 10 and cache.stats.misses == 12  # the 10 old views were not encoded again
    full = vit_b32.encode_views(views)
    assert (incremental - full).abs().max().item() <= 1e-5


def test_mixed_view_counts_permutations_and_replaced_views(tiny_model):
    objects = {name: list(random_views(n, seed=10 + n)) for name, n in (("a", 2), ("b", 5), ("c", 3))}
    cache = ViewTokenCache(tiny_model, storage="fp32")
    cache.encode([(n, list(range(len(v) - 1)), v[:-1]) for n, v in objects.items()])  # all but one view each
    order = [4, 0, 3, 1, 2]
    b = objects["b"]
    batch = cache.encode(
        [
            ("a", [0, 1], objects["a"]),
            ("b", order, [b[i] for i in order]),  # the same views in another order
            ("c", [0, 1, 7], [*objects["c"][:2], random_views(1, seed=99)[0]]),  # view 2 replaced by a new one
        ]
    )
    full = tiny_model.encode_views([objects["a"], b, [*objects["c"][:2], random_views(1, seed=99)[0]]])
    assert (batch - full).abs().max().item() <= 1e-5
    assert cache.views == 2 + 5 + 3  # c's replaced view took its tokens with it


@pytest.mark.parametrize(("storage", "bound"), [("fp16", 2e-5), ("bf16", 2e-4)])
def test_half_precision_storage_halves_the_bytes_and_stays_close(vit_b32, storage, bound):
    views = list(random_views(6, seed=2))
    cache = ViewTokenCache(vit_b32, storage=storage)
    cache.encode([("x", list(range(5)), views[:5])])
    embedding = cache.encode([("x", list(range(6)), views)])
    assert (embedding - vit_b32.encode_views(views)).abs().max().item() <= bound
    assert cache.nbytes == 6 * 50 * 768 * 2
    # an encode of views none of which is cached yet uses their tokens as computed, not a half copy
    first = cache.encode([("new", list(range(6)), views)])
    assert torch.equal(first, vit_b32.encode_views(views))


def test_the_cache_is_bounded_in_bytes_least_recently_used_first(tiny_model):
    per_view = 50 * 64 * 4
    cache = ViewTokenCache(tiny_model, max_bytes=5 * per_view, storage="fp32")
    for name in ("old", "new"):
        cache.encode([(name, [0, 1], list(random_views(2, seed=len(name))))])
    cache.encode([("old", [0, 1], list(random_views(2, seed=3)))])  # touched: "new" is now the oldest
    cache.encode([("third", [0, 1], list(random_views(2, seed=5)))])
    assert cache.nbytes <= 5 * per_view and cache.stats.evicted_objects == 1 and cache.views == 4
    cache.forget(["old"])
    assert cache.views == 2
    views = list(random_views(6, seed=6))  # one object larger than the bound: encoded, not kept
    embedding = cache.encode([("big", list(range(6)), views), ("small", [0], views[:1])])
    torch.testing.assert_close(embedding[:1], tiny_model.encode_views(views), atol=1e-5, rtol=0)
    # the others stay (before: it flushed every object first, then itself), and so does the small one
    # made in the same batch; a warm of it does not run the model for tokens it would drop at once
    assert cache.views == 3 and cache.nbytes == 3 * per_view and set(cache._objects) == {"third", "small"}
    calls = []
    cache.model = _Counting(tiny_model, calls)
    assert cache.warm("big", list(range(6)), views) == 0 and cache.views == 3 and not calls
    fresh = ViewTokenCache(_Counting(tiny_model, calls), max_bytes=5 * per_view, storage="fp32")
    fresh.encode([("small", [0], views[:1])])  # one view's size is known from any object
    assert fresh.warm("big", list(range(6)), views) == 0 and calls == [1]


def test_tokens_run_ahead_are_used_by_the_encode_and_not_brought_back_after_a_forget(tiny_model):
    views = list(random_views(4, seed=8))
    cache = ViewTokenCache(tiny_model, storage="fp32")
    assert cache.warm("x", [0, 1, 2], views[:3]) == 3 and cache.warm("x", [0, 1, 2], views[:3]) == 0
    embedding = cache.encode([("x", [0, 1, 2, 3], views)])
    torch.testing.assert_close(embedding, tiny_model.encode_views(views), atol=1e-5, rtol=0)
    assert (cache.stats.hits, cache.stats.misses, cache.stats.warmed) == (3, 4, 3)
    assert cache.warm("x", [1, 3], [views[1], views[3]]) == 0 and cache.views == 2  # keys 0, 2 dropped
    view_tokens = tiny_model.view_tokens

    def forgotten_meanwhile(batch):  # a forget lands while a warm job runs the per-view blocks
        cache.forget(["y"])
        return view_tokens(batch)

    tiny_model.view_tokens = forgotten_meanwhile
    try:
        cache.warm("y", [0], views[:1])
    finally:
        tiny_model.view_tokens = view_tokens
    assert cache.views == 2 and "y" not in cache._objects


def test_object_views_for_scripts(tiny_model):
    views = ObjectViews(tiny_model)
    keys = [views.add(v) for v in random_views(3, seed=4)]
    first = views.embedding()
    torch.testing.assert_close(first[None], tiny_model.encode_views(list(random_views(3, seed=4))), atol=1e-5, rtol=0)
    views.remove(keys[1])
    torch.testing.assert_close(
        views.embedding()[None], tiny_model.encode_views(list(random_views(3, seed=4)[[0, 2]])), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match=r"view 2: expected an \(H, W, 3\) RGB image, got shape \(4, 4\)"):
        views.add(np.zeros((4, 4), np.float32))
    assert len(views) == 2  # the bad view took nothing with it
    with pytest.raises(FileNotFoundError, match="missing.png"):
        views.add("missing.png")
    with pytest.raises(KeyError, match="no view with key 1"):
        views.remove(keys[1])


def test_a_script_adds_views_in_every_form_encode_views_takes_and_each_is_encoded_once(tmp_path):
    """The library's one-object handle, from the top-level package, on a checkpoint in the published
    layout: files, PIL images, float arrays and a camera buffer reused between views."""
    model = ddclip_core.load_model(published_tiny(tmp_path), device="cpu")
    views = list(random_views(5, size=80, seed=21))
    Image.fromarray(views[0]).save(tmp_path / "v0.png")
    forms = [tmp_path / "v0.png", Image.fromarray(views[1]), views[2].astype(np.float32) / 255.0]
    buffer = np.empty_like(views[3])  # a camera loop writing each frame into one buffer
    handle = ddclip_core.ObjectViews(model)
    for form in forms:
        handle.add(form)
    first = handle.embedding()
    for view in views[3:]:
        buffer[:] = view
        handle.add(buffer)
    second = handle.embedding()
    assert handle.stats.misses == 5 and handle.stats.hits == 3  # each view through the per-view blocks once
    torch.testing.assert_close(first[None], model.encode_views(views[:3]), atol=1e-5, rtol=0)
    torch.testing.assert_close(second[None], model.encode_views(views), atol=1e-5, rtol=0)
    assert handle.nbytes > 0 and len(handle) == 5


def test_the_engine_encodes_each_view_once_and_equals_a_full_encode(tmp_path):
    model = load_model(published_tiny(tmp_path), device="cpu")
    config = PerceptionConfig(view_cache_storage="fp32")
    engine = Perception(model, config, PerceptionSettings(min_views=2, reencode_after=2, timeout_s=100.0))
    results: list = []
    engine.on_results = results.extend
    engine.start()
    views = list(random_views(8, size=96, seed=7))
    for i, view in enumerate(views):  # encodes at 2, 4, 6 and 8 views
        engine.add_view("t", view)
        if i % 2:
            deadline = time.monotonic() + 60
            while not any(r.num_views == i + 1 for r in results):
                assert time.monotonic() < deadline
                time.sleep(0.01)
    stats = dict(engine.stats())
    assert stats["views through the per-view blocks"] == 8  # each view once, in an encode or ahead of it
    ahead = stats["of those, ahead of their track's encode (idle encoder)"]  # as timing allowed
    assert stats["views encoded once and reused"] == 2 + 4 + 6 + ahead
    np.testing.assert_allclose(results[-1].embedding, model.encode_views(views).numpy()[0], atol=1e-5)
    keys = list(engine.buffer.get("t").keys)
    newer = random_views(1, size=96, seed=70)[0]  # a view the encoder warmed after enrolment read the keys
    engine.view_cache.warm("t", [*keys, 10**6], [*views, newer])
    engine.enroll("Ana's mug", track_id="t")  # the track's cached tokens serve its enrolment too
    assert 10**6 in engine.view_cache._objects["t"]  # the enrolment's older key list took nothing away
    after = dict(engine.stats())
    assert after["views through the per-view blocks"] == 9 and after["views encoded once and reused"] == 20 + ahead
    enrolled = engine.bank.embedding("enrolled:Ana's mug")
    np.testing.assert_allclose(enrolled, model.encode_views(views).numpy()[0], atol=1e-5)
    engine.forget(["t"])
    assert engine.view_cache.views == 0  # forgotten with its track
    engine.close()


def test_an_idle_encoder_runs_new_views_ahead_and_the_last_encode_only_crosses_them(tmp_path):
    """Views come one at a time while the encoder is idle: each goes through the per-view blocks as it
    comes, and the encode after the track's last view finds every view's tokens (and equals a full encode)."""
    model = load_model(published_tiny(tmp_path), device="cpu")
    config = PerceptionConfig(view_cache_storage="fp32")
    engine = Perception(model, config, PerceptionSettings(min_views=8, timeout_s=100.0))
    results: list = []
    engine.on_results = results.extend
    engine.start()
    views = list(random_views(5, size=96, seed=11))
    for i, view in enumerate(views):
        engine.add_view("t", view)
        deadline = time.monotonic() + 60
        while engine.view_cache.stats.warmed < i + 1:  # the idle worker takes it up
            assert time.monotonic() < deadline, "the idle encoder did not run the new view ahead"
            time.sleep(0.01)
    assert not results  # min_views not reached: nothing encoded, only run ahead
    last = random_views(1, size=96, seed=12)[0]
    engine.add_view("t", last, ended=True)  # a sixth view, and the track ends
    deadline = time.monotonic() + 60
    while not results:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stats = dict(engine.stats())
    ahead = stats["of those, ahead of their track's encode (idle encoder)"]
    assert stats["views through the per-view blocks"] == 6 and ahead in (5, 6)  # the last may race its encode
    assert stats["views encoded once and reused"] == ahead
    expected = model.encode_views([*views, last]).numpy()[0]
    np.testing.assert_allclose(results[0].embedding, expected, atol=1e-5)
    engine.close()


def test_a_tracks_cloud_is_embedded_once_until_it_changes():
    model = make_tiny(seed=3)
    clouds = TrackClouds(CloudEmbedder(GSCLIPEncoder(GSEncoderConfig.tiny(embed_dim=32)).eval(), 300), 0.5, 10)
    engine = Perception(model, PerceptionConfig(), PerceptionSettings(min_views=1), clouds=clouds)
    calls = []
    embed = clouds.embedder.embed
    clouds.embedder.embed = lambda c: calls.append(len(c)) or embed(c)
    rng = np.random.default_rng(0)
    points, colours = rng.normal(size=(200, 3)).astype(np.float32), rng.uniform(size=(200, 3)).astype(np.float32)
    cloud = clouds.add("t", points, colours)
    engine.add_view("t", random_views(1, size=64)[0])  # a tracked object: it is in the buffer
    from ddclip_core.perception.worker import EncodeJob

    first = engine._encode([EncodeJob("t", list(random_views(1, size=64)), points=cloud, keys=[1])])
    again = engine._encode([EncodeJob("t", list(random_views(2, size=64)), points=cloud, keys=[1, 2])])
    assert calls == [1] and clouds.reused == 1 and not np.allclose(first, again)
    clouds.add("t", points[:150], colours[:150])  # a new cloud: embedded again
    engine._encode([EncodeJob("t", [], points=clouds.get("t"))])
    assert calls == [1, 1]
    # other encoder weights (a new checkpoint, a training step): before, the old embedding stayed fused in
    torch.manual_seed(1)
    clouds.embedder.encoder.load_state_dict(GSCLIPEncoder(GSEncoderConfig.tiny(embed_dim=32)).state_dict())
    renewed = engine._encode([EncodeJob("t", [], points=clouds.get("t"))])
    assert calls == [1, 1, 1]
    np.testing.assert_allclose(renewed[0], embed([clouds.get("t")])[0], atol=1e-6)


@pytest.mark.parametrize("change", ["load_state_dict", "in_place_update", "precision", "preprocessing", "threshold"])
def test_kept_tokens_are_dropped_when_the_model_they_came_from_changes(change):
    """A script keeps an ObjectViews while it fine-tunes, reloads or reconfigures the model: tokens from
    before must not be mixed into embeddings after (they would silently differ from encode_views)."""
    model = make_tiny(seed=3)
    views = [np.ascontiguousarray(v[:, :40]) for v in random_views(4, seed=6)]  # not square: resize matters
    handle = ObjectViews(model)
    for view in views[:3]:
        handle.add(view)
    handle.embedding()
    if change == "load_state_dict":
        model.load_state_dict(make_tiny(seed=4).state_dict())
    elif change == "in_place_update":
        with torch.no_grad():
            model.clip.visual.transformer.resblocks[0].mlp.c_fc.weight.mul_(1.5)
    elif change == "precision":
        model.set_precision("bf16")
    elif change == "threshold":
        before = model.weights_id
        model.config.layers_threshold = 1  # the tower cut elsewhere: other tokens, other embeddings
        assert model.weights_id != before and "-lt1-" in model.weights_id
    else:
        model.set_preprocessing(resize="pad")
    handle.add(views[3])
    fresh = ObjectViews(model)
    for view in views:
        fresh.add(view)
    assert torch.equal(handle.embedding(), fresh.embedding())  # all four views encoded again, as a fresh handle does
    assert handle.stats.invalidations == 1 and handle.stats.misses == 3 + 4
    handle.embedding()
    assert handle.stats.invalidations == 1 and handle.stats.hits == 4  # unchanged since: reused again


def test_tokens_fp16_cannot_hold_are_kept_in_their_own_type(tiny_model):
    views = list(random_views(3, size=64, seed=8))
    view_tokens = tiny_model.view_tokens
    tiny_model.view_tokens = lambda batch: view_tokens(batch) * 1e6  # outliers beyond fp16's 65504
    cache = ViewTokenCache(tiny_model, storage="fp16")
    cache.encode([("a", [0, 1], views[:2])])
    entries = cache._objects["a"]
    assert {t.dtype for t in entries.values()} == {torch.float32}  # before: fp16 infinities
    assert all(bool(torch.isfinite(t).all()) for t in entries.values())
    assert cache.nbytes == sum(t.nbytes for t in entries.values())
    embedding = cache.encode([("a", [0, 1, 2], views)])
    assert bool(torch.isfinite(embedding).all())


def test_a_key_or_an_object_twice_in_one_call_is_refused_and_arrays_of_views_are_taken(tiny_model):
    views = random_views(3, size=64, seed=9)
    cache = ViewTokenCache(tiny_model, storage="fp32")
    with pytest.raises(ValueError, match=r"object 'x': a view key appears twice in \[0, 0\]"):
        cache.encode([("x", [0, 0], [views[0], views[1]])])  # before: both views got the second's tokens
    with pytest.raises(ValueError, match="object 'x' is listed twice in one call"):
        cache.encode([("x", [0], views[:1]), ("x", [1], views[1:2])])
    with pytest.raises(ValueError, match="a view key appears twice"):
        cache.warm("x", [1, 1], [views[0], views[1]])
    assert cache.views == 0 and cache.stats.misses == 0  # nothing ran
    embedding = cache.encode([("x", [0, 1, 2], views)])  # an (F, H, W, 3) array, as encode_views takes
    torch.testing.assert_close(embedding, tiny_model.encode_views(list(views)), atol=1e-5, rtol=0)


def test_a_removed_view_takes_its_tokens_with_it_at_once(tiny_model):
    handle = ObjectViews(tiny_model)
    keys = [handle.add(view) for view in random_views(3, size=64, seed=11)]
    handle.embedding()
    per_view = handle.nbytes // 3
    handle.remove(keys[0])
    assert handle.nbytes == 2 * per_view  # before: still 3 views' bytes until the next embedding
    handle.remove(keys[1])
    handle.remove(keys[2])
    assert handle.nbytes == 0  # before: never freed, since embedding() of no views raises


class _Counting:
    """The model, counting its per-view block runs."""

    def __init__(self, model, calls: list) -> None:
        self._model, self._calls = model, calls

    def view_tokens(self, views):
        self._calls.append(len(views))
        return self._model.view_tokens(views)

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_an_encode_of_kept_tokens_alone_runs_as_one_with_a_new_view_does():
    # before: with every view kept (a warm got there first) the cross-view blocks ran on float32 tokens,
    # with one new view on the model's 16-bit ones: the same track's embedding hung on that race
    model = make_tiny().set_precision("fp16")
    views = list(random_views(4, size=64, seed=11))
    want = model.encode_views(views)
    for warmed in (3, 4):
        cache = ViewTokenCache(model, storage="fp32")  # lossless for 16-bit tokens
        cache.warm("t", list(range(warmed)), views[:warmed])
        torch.testing.assert_close(cache.encode([("t", list(range(4)), views)]), want, atol=1e-6, rtol=0)
