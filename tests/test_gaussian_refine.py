"""Refinement of lifted Gaussians against real renders (pybullet TinyRenderer), on the CPU renderer.

The CUDA path (gsplat's kernels) is compared with the CPU one where a GPU is present; that test has
never run on the machines this was written on (no GPU).
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from ddclip_core.gaussians import (
    Gaussians,
    PosedImage,
    RefinementUnavailableWarning,
    lift,
    lift_points,
    refine_gaussians,
    render_gaussians,
)
from ddclip_core.gaussians.rasterize import rasterize
from ddclip_core.gaussians.refine import camera_tensors, render

pytest.importorskip("gsplat", reason="refinement uses gsplat's projection (the 'gaussians' extra)")
pytest.importorskip("pybullet", reason="real renders come from pybullet (the 'train' extra)")

SIZE, POINTS, HELD_OUT = 48, 1000, 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Many small ops per step: with the 2 cores shared, a second thread costs more than it gives.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def duck(tmp_path_factory):
    """12 depth renders of pybullet's duck: the cloud fused from the first 8, all views posed."""
    from ddclip_core.gaussians import voxel_average
    from training.catalog import pybullet_objects
    from training.gaussian_data import fuse_views, posed_images, read_render
    from training.render import RenderSettings, render_all

    out = tmp_path_factory.mktemp("renders")
    obj = next(o for o in pybullet_objects() if o.uid == "duck")
    render_all([obj], out, RenderSettings(size=SIZE, depth=True), progress=False)
    views, depth, meta = read_render(out / "duck")
    points, colours = fuse_views(views[:-HELD_OUT], depth[:-HELD_OUT], meta["cameras"][:-HELD_OUT])
    points, colours = voxel_average(points, colours, float(np.linalg.norm(np.ptp(points, 0))) / 128)
    keep = np.sort(np.random.default_rng(0).choice(len(points), POINTS, replace=False))
    posed = posed_images(views, meta["cameras"])
    return lift_points(points[keep], colours[keep]), posed[:-HELD_OUT], posed[-HELD_OUT:]


def l1(gaussians: Gaussians, views: list[PosedImage]) -> float:
    rendered = render_gaussians(gaussians, views)
    return float(np.abs(rendered - np.stack([v.image for v in views]) / 255.0).mean())


def test_refinement_fits_the_views_and_generalises_to_held_out_ones(duck):
    lifted, train, held_out = duck
    result = refine_gaussians(lifted, train, steps=30, opacity_reset_every=1000)
    assert result.backend == "torch" and len(result.losses) == 30 and not result.resets
    print(f"train L1 {result.losses[0]:.4f} -> {result.losses[-1]:.4f}; held-out L1 {l1(lifted, held_out):.4f} -> "
          f"{l1(result.gaussians, held_out):.4f}")  # fmt: skip
    # 0.054 -> 0.035 on the 8 views, 0.056 -> 0.046 on the 4 held out when written.
    assert result.losses[-1] < 0.85 * result.losses[0]
    assert l1(result.gaussians, held_out) < 0.95 * l1(lifted, held_out)
    refined = result.gaussians
    np.testing.assert_allclose(np.linalg.norm(refined.rotations, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(refined.positions, lifted.positions)  # positions stay on the points
    assert not np.allclose(refined.scales, lifted.scales) and not np.allclose(refined.rotations, lifted.rotations)


def test_opacity_reset_on_schedule_and_unit_quaternions(duck):
    lifted, train, _ = duck
    result = refine_gaussians(lifted, train[:2], steps=7, opacity_reset_every=3)
    assert [step for step, _ in result.resets] == [3, 6]  # not after the last step
    assert all(top <= 0.01 + 1e-6 for _, top in result.resets)
    assert result.losses[3] > result.losses[2]  # the reset makes everything fainter: the loss jumps
    # Optimised quaternions drift off the unit sphere; what comes back is normalised.
    np.testing.assert_allclose(np.linalg.norm(result.gaussians.rotations, axis=1), 1.0, atol=1e-6)


def test_lift_refines_and_says_so(duck):
    lifted, train, _ = duck
    result = lift(lifted.positions, lifted.colours, train[:2], steps=2, opacity_reset_every=50)
    assert result.refined and result.note.startswith("refined for 2 steps (torch renderer")
    assert len(result.refinement.losses) == 2
    if not torch.cuda.is_available():
        with pytest.warns(RefinementUnavailableWarning, match="CUDA is not available"):
            fallback = lift(lifted.positions, lifted.colours, train[:1], device="cuda")
        assert not fallback.refined and fallback.note.startswith("not refined")


def test_one_gaussian_and_occlusion_by_hand():
    """A pixel's value from the formula: alpha = opacity * exp(-power), front Gaussian first."""
    K = torch.tensor([[[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]])  # pixel centres at +0.5: (7.5, 7.5) is the middle
    view = torch.eye(4)[None]
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 3.0]])
    quats = torch.tensor([[1.0, 0, 0, 0], [0.0, 0, 0, 2.0]])  # the second one un-normalised on purpose
    scales = torch.full((2, 3), 0.1)
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    opacities = torch.tensor([0.6, 0.9])
    image, alpha = rasterize(means, quats, scales, opacities, colours, view, K, 16, 16, torch.ones(3))
    # Gaussian 0 at pixel (8, 8): centre (8.5, 8.5) - (8, 8); 2-D covariance (20 * 0.1 / 2)^2 + 0.3 on the diagonal.
    var0, var1 = (20 * 0.1 / 2) ** 2 + 0.3, (20 * 0.1 / 3) ** 2 + 0.3
    a0 = 0.6 * math.exp(-0.5 * (0.25 + 0.25) / var0)
    a1 = 0.9 * math.exp(-0.5 * (0.25 + 0.25) / var1)
    expected = a0 * colours[0] + (1 - a0) * a1 * colours[1] + (1 - a0) * (1 - a1) * torch.ones(3)
    torch.testing.assert_close(image[0, 8, 8], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alpha[0, 8, 8], torch.tensor(a0 + (1 - a0) * a1), atol=1e-5, rtol=1e-5)
    assert image[0, 0, 0].tolist() == [1.0, 1.0, 1.0]  # far from both: background only


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("gsplat") is None,
    reason="needs CUDA and gsplat's kernels (never run where this was written: no GPU)",
)
def test_gsplat_kernels_match_the_torch_renderer(duck):
    lifted, train, _ = duck
    device = torch.device("cuda")
    _, viewmats, Ks = camera_tensors(train, device)
    tensors = {
        "means": torch.from_numpy(lifted.positions).to(device),
        "quats": torch.from_numpy(lifted.rotations).to(device),
        "scales": torch.from_numpy(lifted.scales).to(device),
        "opacities": torch.full((len(lifted),), 0.5, device=device),
        "colours": torch.from_numpy(lifted.colours).to(device),
    }
    background = torch.ones(3, device=device)
    with torch.no_grad():
        kernels = render(tensors, viewmats, Ks, SIZE, SIZE, background, "gsplat")
        plain = render(tensors, viewmats, Ks, SIZE, SIZE, background, "torch")
    assert float((kernels - plain).abs().mean()) < 2e-3 and float((kernels - plain).abs().max()) < 5e-2
    gpu = refine_gaussians(lifted, train, steps=20, opacity_reset_every=1000, device="cuda")
    cpu = refine_gaussians(lifted, train, steps=20, opacity_reset_every=1000, device="cpu")
    assert gpu.backend == "gsplat" and cpu.backend == "torch"
    np.testing.assert_allclose(gpu.losses, cpu.losses, rtol=0.05)


def test_downscaled_view_keeps_the_geometry(duck):
    lifted, train, _ = duck
    view = train[0]
    half = view.downscaled(2)
    assert half.image.shape == (SIZE // 2, SIZE // 2, 3)
    np.testing.assert_allclose(half.image[0, 0], view.image[:2, :2].reshape(4, 3).mean(0) / 255.0, atol=1e-6)
    # The same splats seen through both cameras: the half-size render is the full one averaged.
    full, small = render_gaussians(lifted, [view])[0], render_gaussians(lifted, [half])[0]
    pooled = full.reshape(SIZE // 2, 2, SIZE // 2, 2, 3).mean((1, 3))
    error = np.abs(small - pooled).mean()
    # The splats are not band-limited alike at both sizes (a fixed 0.3 px^2 blur), so compare with the
    # same camera off by half a small pixel: a K scaled without the pixel-centre correction.
    shifted = PosedImage(half.image, half.K + np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]]), half.world_to_camera)
    off = np.abs(render_gaussians(lifted, [shifted])[0] - pooled).mean()
    print(f"half-size render vs the full one pooled: L1 {error:.4f}; half a pixel off: {off:.4f}")
    assert error < 0.03 and error < 0.8 * off
    with pytest.raises(ValueError, match="must be >= 1 and divide"):
        view.downscaled(5)
