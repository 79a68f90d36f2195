"""Per-track view buffers: diverse view selection, encode triggers, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from ddclip_core.tracks import TrackBuffer, TrackPolicy


def pattern(seed: int, size: int = 64) -> np.ndarray:
    """A distinct view: smooth random colour blobs (different seeds look different)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    return np.kron(coarse, np.ones((size // 4, size // 4, 1), np.uint8))


def near_copy(view: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-2, 3, view.shape)
    return np.clip(view.astype(int) + noise, 0, 255).astype(np.uint8)


def test_near_duplicate_frames_do_not_crowd_out_diverse_views():
    buffer = TrackBuffer(TrackPolicy(max_views=4, min_views=1))
    for seed in range(4):
        assert buffer.add("mug", pattern(seed), now=seed)
    for i in range(30):  # the robot stares at one side of the mug
        assert not buffer.add("mug", near_copy(pattern(3), i), now=10 + i)
    assert buffer.rejected_views == 30
    kept = buffer.get("mug").views
    assert len(kept) == 4 and all(np.array_equal(kept[i], pattern(i)) for i in range(4))


def test_a_reused_camera_buffer_does_not_change_kept_views():
    """Views come from one buffer that the caller overwrites, as a camera loop does, and as crops that
    are slices of a frame (a full-width box is a contiguous slice): the buffer keeps what it was given."""
    buffer = TrackBuffer(TrackPolicy(max_views=4, min_views=1, max_side=64))
    frame = np.empty((64, 64, 3), np.uint8)
    for seed in range(3):
        frame[:] = pattern(seed)
        assert buffer.add("mug", frame, now=seed)
        assert buffer.add("cup", frame[16:48], now=seed)  # rows of the frame: a contiguous view of it
    frame[:] = 0
    assert all(np.array_equal(v, pattern(i)) for i, v in enumerate(buffer.get("mug").views))
    assert all(np.array_equal(v, pattern(i)[16:48]) for i, v in enumerate(buffer.get("cup").views))
    assert all(v.flags.c_contiguous and v.flags.owndata for v in buffer.get("cup").views)


def test_a_new_side_replaces_the_most_redundant_view():
    buffer = TrackBuffer(TrackPolicy(max_views=3, min_views=1))
    a = pattern(0)
    a_shifted = a.copy()
    a_shifted[:16] = 255 - a_shifted[:16]  # similar to a, not identical
    buffer.add("t", a, 0)
    buffer.add("t", a_shifted, 1)
    buffer.add("t", pattern(1), 2)
    assert buffer.add("t", pattern(2), 3)  # a genuinely new side
    kept = buffer.get("t").views
    assert any(np.array_equal(v, pattern(2)) for v in kept)
    assert sum(np.array_equal(v, a) or np.array_equal(v, a_shifted) for v in kept) == 1


def test_a_one_view_track_takes_each_novel_view_in_place_of_its_own():
    """max_views 1 (allowed: single-view recognition): before, a track's second view raised."""
    buffer = TrackBuffer(TrackPolicy(max_views=1, min_views=1))
    assert buffer.add("t", pattern(0), 0)
    first_key = buffer.get("t").keys[0]
    assert buffer.add("t", pattern(1), 1)  # novel: replaces the kept view
    track = buffer.get("t")
    assert len(track.views) == 1 and np.array_equal(track.views[0], pattern(1)) and track.keys[0] != first_key
    assert not buffer.add("t", near_copy(pattern(1), 5), 2)  # not novel: the kept view stays


@pytest.mark.parametrize("max_age_s", [1.0, 2.0])
def test_a_track_leaving_the_buffer_is_encoded_with_what_it_has_first(max_age_s):
    """max_age_s at or below timeout_s (accepted at run time): before, such tracks left before their
    quiet-track encode, and their views never reached the memory."""
    buffer = TrackBuffer(TrackPolicy(min_views=3, reencode_after=4, timeout_s=2.0, max_age_s=max_age_s))
    buffer.add("few", pattern(0), 0.0)  # fewer than min_views
    buffer.add("more", pattern(1), 0.0)
    for seed in range(2, 5):
        buffer.add("more", pattern(seed), 0.0)
    (encoded,) = buffer.due(0.1)
    assert encoded.track_id == "more"
    buffer.add("more", pattern(5), 0.2)  # one new view: below reencode_after
    due = buffer.due(max_age_s + 0.3)
    assert sorted((t.track_id, len(t.views)) for t in due) == [("few", 1), ("more", 5)]
    assert len(buffer) == 0 and sorted(buffer.take_removed()) == ["few", "more"]


def test_encode_triggers():
    buffer = TrackBuffer(TrackPolicy(min_views=3, reencode_after=2, timeout_s=2.0))
    buffer.add("t", pattern(0), 0.0)
    buffer.add("t", pattern(1), 0.1)
    assert buffer.due(0.2) == []
    buffer.add("t", pattern(2), 0.3)
    (track,) = buffer.due(0.4)
    assert track.encoded_views == 3
    assert buffer.due(0.5) == []  # nothing new
    buffer.add("t", pattern(3), 0.6)
    assert buffer.due(0.7) == []  # one new view: not enough to re-encode yet
    buffer.add("t", pattern(4), 0.8)
    assert [t.encoded_views for t in buffer.due(0.9)] == [5]
    buffer.add("slow", pattern(5), 1.0)  # one view only, then silence
    assert buffer.due(2.5) == []
    assert [t.track_id for t in buffer.due(3.1)] == ["slow"]  # timeout
    buffer.add("t", pattern(6), 3.2)
    buffer.end("t")
    assert [t.track_id for t in buffer.due(3.3)] == ["t"]  # track end


def test_a_track_waiting_for_the_encoder_swaps_its_newest_view_instead_of_adding():
    """Under overload a full track's queued re-encode must not grow: each new view takes the newest (not
    yet encoded) view's place, so the encode still has reencode_after new views, the freshest among them."""
    buffer = TrackBuffer(TrackPolicy(max_views=6, min_views=2, reencode_after=2, timeout_s=100.0))
    for seed in range(4):
        buffer.add("t", pattern(seed), seed)
    (track,) = buffer.due(4.0)  # 4 views, in an encode now queued
    encoded = list(track.keys)
    buffer.add("t", pattern(4), 5.0)
    buffer.add("t", pattern(5), 5.1)
    (track,) = buffer.due(5.2)  # 2 new views: queued re-encode
    queued = list(track.keys)
    for seed in range(6, 10):  # the encoder is busy: these arrive while that re-encode waits
        assert buffer.add("t", pattern(seed), 6.0 + seed, waiting=True)
        (again,) = buffer.due(6.1 + seed)  # the queued encode is made again, with the new view
        assert len(again.views) == 6 and np.array_equal(again.views[-1], pattern(seed))
        assert len(set(again.keys) - set(encoded)) == 2  # still 2 views the encoder has not seen
    assert again.keys[:5] == queued[:5] and again.keys[5] not in queued
    assert not buffer.add("t", near_copy(pattern(0), 1), 20.0, waiting=True)  # near duplicates still rejected
    assert buffer.due(20.1) == []
    assert buffer.add("t", pattern(11), 21.0)  # no longer waiting: grows again towards the next re-encode
    assert buffer.due(21.1) == []
    buffer.add("burst", pattern(20), 30.0)
    buffer.due(30.1)
    for seed in range(21, 25):  # not full: every view counts, waiting or not (the track's last burst)
        assert buffer.add("burst", pattern(seed), 31.0, waiting=True)
    assert len(buffer.get("burst").views) == 5


def test_due_for_given_tracks_looks_at_those_only():
    buffer = TrackBuffer(TrackPolicy(min_views=1, timeout_s=1.0, max_age_s=5.0))
    buffer.add("old", pattern(0), 0.0)
    buffer.add("quiet", pattern(1), 2.0)
    buffer.add("new", pattern(2), 6.0)
    assert [t.track_id for t in buffer.due(6.0, ["new", "new", "unknown"])] == ["new"]
    assert "old" in buffer  # not expired by a call for other tracks
    # "quiet" due; "old" too, encoded with what it has as it leaves (before: dropped unencoded)
    assert [t.track_id for t in buffer.due(6.0)] == ["old", "quiet"]
    assert "old" not in buffer


def test_memory_is_bounded():
    buffer = TrackBuffer(TrackPolicy(max_tracks=3, max_age_s=10.0, max_side=64))
    big = np.zeros((1000, 500, 3), np.uint8)
    big[:500] = 200
    buffer.add("a", big, 0.0)
    assert buffer.get("a").views[0].shape == (64, 32, 3)
    for name, now in (("b", 1.0), ("c", 2.0)):
        buffer.add(name, pattern(1), now)
    buffer.add("a", pattern(2), 3.0)  # a is recent again
    buffer.add("d", pattern(3), 4.0)  # over capacity: the least recently seen (b) goes
    assert "b" not in buffer and all(t in buffer for t in ("a", "c", "d"))
    assert buffer.evicted == 1
    buffer.expire(13.5)  # c unseen since 2.0 for > 10 s
    assert "c" not in buffer and "a" not in buffer and "d" in buffer
    assert buffer.forget(["d", "nope"]) == 1 and len(buffer) == 0


def test_bad_views_and_policies():
    buffer = TrackBuffer()
    for bad in (np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)):
        with pytest.raises(ValueError, match="non-empty"):
            buffer.add("t", bad, 0.0)
    with pytest.raises(ValueError, match="min_views <= max_views"):
        TrackPolicy(max_views=2, min_views=3)
