"""One preprocessing for every cloud (prepare_cloud): its steps by hand, the encoder carrying its
training data's settings, and the engine embedding a cloud exactly as the library does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddclip_core.gaussians import (
    CloudEmbedder,
    CloudSettings,
    GSCLIPEncoder,
    GSEncoderConfig,
    lift_points,
    load_gs_encoder,
    prepare_cloud,
    save_gs_encoder,
)
from ddclip_core.perception.clouds import TrackClouds
from ddclip_core.perception.worker import EncodeJob

# Five pairs of points 0.01 apart: voxel averaging (voxel = diagonal / 10 = 0.17) merges each pair.
CLUSTERS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32)
POINTS = np.concatenate([CLUSTERS, CLUSTERS + np.array([0.01, 0, 0])])
COLOURS = np.concatenate([np.full((5, 3), 0.2), np.full((5, 3), 0.4)])


def test_voxels_budget_centre_and_scale_by_hand():
    cloud = prepare_cloud(POINTS, COLOURS, CloudSettings(max_points=5, voxel_fraction=0.1, min_points=4))
    means = CLUSTERS + np.array([0.005, 0, 0])
    centre = np.array([0.505, 0.5, 0.5])
    np.testing.assert_allclose(cloud.centre, centre, atol=1e-6)
    np.testing.assert_allclose(cloud.scale, np.sqrt(3 * 0.5**2), rtol=1e-6)  # a corner's distance from the centre
    back = cloud.points * cloud.scale + cloud.centre
    np.testing.assert_allclose(back[np.lexsort(back.T)], means[np.lexsort(means.T)], atol=1e-6)
    np.testing.assert_allclose(cloud.colours, 0.3, atol=1e-6)  # each voxel: the mean of 0.2 and 0.4
    assert np.linalg.norm(cloud.points, axis=1).max() == pytest.approx(1.0)

    budget = CloudSettings(max_points=4, voxel_fraction=0.1, min_points=4)
    subset = prepare_cloud(POINTS, COLOURS, budget)
    assert len(subset) == 4 and np.array_equal(subset.points, prepare_cloud(POINTS, COLOURS, budget).points)
    unvoxelled = prepare_cloud(POINTS, COLOURS, CloudSettings(max_points=64, voxel_fraction=0.0, min_points=4))
    assert len(unvoxelled) == 10
    with pytest.raises(ValueError, match="a cloud of 5 distinct points .* too small to embed"):
        prepare_cloud(POINTS, COLOURS, CloudSettings(max_points=64, voxel_fraction=0.1, min_points=6))
    bad = POINTS.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        prepare_cloud(bad, COLOURS)
    with pytest.raises(ValueError, match="min_points <= max_points"):
        CloudSettings(max_points=8, min_points=16)


def test_the_encoder_carries_its_training_preprocessing(tmp_path):
    config = GSEncoderConfig.tiny(32)
    config.cloud = CloudSettings(max_points=300, voxel_fraction=1 / 64, min_points=16)
    path = save_gs_encoder(GSCLIPEncoder(config), tmp_path / "gs.safetensors")
    loaded = load_gs_encoder(path)
    assert loaded.config.cloud == config.cloud
    assert CloudEmbedder(loaded, max_points=8192).settings == config.cloud  # never more than it was trained on
    assert CloudEmbedder(loaded, max_points=100).max_points == 100
    # The preprocessing is part of what makes embeddings comparable.
    assert loaded.weights_id != GSCLIPEncoder(GSEncoderConfig.tiny(32)).weights_id


def test_an_encoder_trained_on_draws_sees_draws_of_the_cloud_it_was_trained_to_lift():
    from ddclip_core.gaussians import lift_points
    from ddclip_core.gaussians.preprocess import draw_subset

    torch.manual_seed(0)
    config = GSEncoderConfig.tiny(32)
    config.cloud = CloudSettings(max_points=300, voxel_fraction=0.0, min_points=16, draw_points=100)
    encoder = GSCLIPEncoder(config).eval()
    rng = np.random.default_rng(5)
    points, colours = rng.normal(size=(1000, 3)).astype(np.float32), rng.random((1000, 3)).astype(np.float32)
    embedder = CloudEmbedder(encoder)
    prepared = embedder.prepare(points, colours)
    assert len(prepared[0]) == 300  # lifted from as many points as in training
    features = draw_subset(lift_points(*prepared).to_features(), 100)
    assert len(features) == 100
    expected = encoder.encode([features]).numpy()
    np.testing.assert_allclose(embedder.embed([prepared]), expected, atol=1e-6)
    assert draw_subset(features, 200) is features  # fewer rows than the draw: all of them


def test_the_engine_embeds_a_cloud_as_the_library_does():
    torch.manual_seed(0)
    encoder = GSCLIPEncoder(GSEncoderConfig.tiny(32)).eval()
    rng = np.random.default_rng(3)
    points = rng.uniform([-1, -2, 0], [3, 2, 1], (5000, 3)).astype(np.float32) + np.array([10.0, -4.0, 2.0])
    colours = rng.random((5000, 3)).astype(np.float32)
    clouds = TrackClouds(CloudEmbedder(encoder, max_points=700), 0.5, 4)
    kept = clouds.add("box", points, colours)
    engine = clouds.encode([EncodeJob("box", [], points=kept)], lambda jobs: np.zeros((0, 32)))[0]

    # The library, step by step: prepare with the encoder's settings and the engine's budget, lift, encode.
    prepared = prepare_cloud(points, colours, CloudSettings(max_points=700))
    library = encoder.encode(lift_points(prepared.points, prepared.colours)).numpy()[0]
    np.testing.assert_allclose(engine, library, atol=1e-6)
    raw = CloudEmbedder(encoder, max_points=700).embed([(points, colours)], prepared=False)[0]
    np.testing.assert_allclose(raw, library, atol=1e-6)
    # Centring and scale: neither the cloud's units nor where it is change the embedding (a shift can
    # move a point across a voxel border through float32 rounding; not for this one).
    scaled = CloudEmbedder(encoder, max_points=700).embed([(points * 4.0, colours)], prepared=False)[0]
    np.testing.assert_allclose(scaled, library, atol=1e-5)
    moved = CloudEmbedder(encoder, max_points=700).embed([(points - [7.0, 3.0, 100.0], colours)], prepared=False)[0]
    np.testing.assert_allclose(moved, library, atol=1e-5)
