"""Fusion of the multi-view and Gaussian embeddings: endpoints, blend, missing inputs, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddclip_core.fusion import fuse_embeddings

RNG = np.random.default_rng(0)


def unit(*shape: int) -> np.ndarray:
    x = RNG.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_endpoints_are_the_single_embeddings():
    mv, gs = unit(4, 16), unit(4, 16)
    np.testing.assert_allclose(fuse_embeddings(mv, gs, 0.0), mv, atol=1e-6)
    np.testing.assert_allclose(fuse_embeddings(mv, gs, 1.0), gs, atol=1e-6)


def test_blend_by_hand_and_unit_norm():
    mv, gs = np.array([1.0, 0.0], np.float32), np.array([0.0, 3.0], np.float32)  # gs not normalised on input
    half = fuse_embeddings(mv, gs, 0.5)
    np.testing.assert_allclose(half, [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)  # half-way on the circle
    quarter = fuse_embeddings(mv, gs, 0.25)  # 0.75 * (1, 0) + 0.25 * (0, 1), renormalised
    np.testing.assert_allclose(quarter, np.array([0.75, 0.25]) / np.hypot(0.75, 0.25), atol=1e-6)
    fused = fuse_embeddings(unit(5, 32), unit(5, 32), 0.3)
    assert fused.dtype == np.float32 and fused.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-6)


def test_ranking_of_queries_for_one_object_is_the_blend_of_the_two_scores():
    mv, gs, texts = unit(64), unit(64), unit(20, 64)
    for weight in (0.25, 0.5, 0.75):
        fused_scores = texts @ fuse_embeddings(mv, gs, weight)
        blended = (1 - weight) * (texts @ mv) + weight * (texts @ gs)
        # Same up to one positive factor (the blend's norm), so the same ranking of the queries.
        np.testing.assert_allclose(fused_scores / blended, fused_scores[0] / blended[0], rtol=1e-4)
        assert (np.argsort(fused_scores) == np.argsort(blended)).all()
        assert fused_scores[0] / blended[0] > 0


def test_missing_one_uses_the_other_whatever_the_weight():
    mv = np.array([[3.0, 4.0]], np.float32)
    for weight in (0.0, 0.5, 1.0):
        np.testing.assert_allclose(fuse_embeddings(mv, None, weight), [[0.6, 0.8]], atol=1e-6)
        np.testing.assert_allclose(fuse_embeddings(None, mv, weight), [[0.6, 0.8]], atol=1e-6)
    with pytest.raises(ValueError, match="both the multi-view and the Gaussian embedding are missing"):
        fuse_embeddings(None, None)


def test_torch_in_torch_out():
    mv, gs = torch.from_numpy(unit(3, 8)), unit(3, 8)  # mixed: one tensor, one array
    fused = fuse_embeddings(mv, gs, 0.5)
    assert isinstance(fused, torch.Tensor) and fused.dtype == torch.float32 and fused.shape == (3, 8)
    expected = fuse_embeddings(mv.numpy(), gs, 0.5)
    assert isinstance(expected, np.ndarray)
    np.testing.assert_allclose(fused.numpy(), expected, atol=1e-6)


def test_opposite_embeddings_at_a_balanced_weight_fall_back_instead_of_dividing_by_zero():
    mv = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    gs = np.array([[-1.0, 0.0], [0.0, 1.0]], np.float32)  # row 0 cancels at w = 0.5, row 1 does not
    fused = fuse_embeddings(mv, gs, 0.5)
    np.testing.assert_allclose(fused[0], [1.0, 0.0])  # multi-view at a tie
    np.testing.assert_allclose(fused[1], [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    assert np.isfinite(fused).all()


@pytest.mark.parametrize(
    ("mv", "gs", "weight", "error", "match"),
    [
        (unit(8), unit(8), 1.5, ValueError, r"gaussian_weight must be in \[0, 1\]"),
        (unit(8), unit(8), -0.1, ValueError, r"gaussian_weight must be in \[0, 1\]"),
        (unit(8), unit(8), float("nan"), ValueError, r"gaussian_weight must be in \[0, 1\]"),
        (unit(8), unit(8), "0.5", TypeError, "gaussian_weight must be a number"),
        (unit(8), unit(9), 0.5, ValueError, r"\(8,\) and Gaussian embedding \(9,\) differ in shape"),
        (unit(2, 8), unit(3, 8), 0.5, ValueError, "differ in shape"),
        (np.array([1.0, np.nan], np.float32), unit(2), 0.5, ValueError, "multi-view embedding contains NaN"),
        (unit(2), np.array([np.inf, 0.0], np.float32), 0.5, ValueError, "Gaussian embedding contains NaN or inf"),
        (np.zeros(4, np.float32), unit(4), 0.5, ValueError, "multi-view embedding has a zero-length row"),
        (unit(2, 2, 4), unit(2, 2, 4), 0.5, ValueError, r"must be \(D,\) or \(N, D\)"),
        (np.zeros((0, 4), np.float32), None, 0.5, ValueError, r"must be \(D,\) or \(N, D\)"),
        ([1.0, 0.0], None, 0.5, TypeError, "numpy array or torch tensor, got list"),
    ],
)
def test_bad_inputs_give_clear_errors(mv, gs, weight, error, match):
    with pytest.raises(error, match=match):
        fuse_embeddings(mv, gs, weight)
