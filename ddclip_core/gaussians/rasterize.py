"""Differentiable rasterisation of 3D Gaussians in plain torch: the CPU path of the refinement.

gsplat's own CPU-capable code is used where it exists: its pure-PyTorch reference projection
(``gsplat.cuda._torch_impl``: quaternion + scale -> covariance, EWA projection with its 0.3 px
low-pass, radii, conics). Its reference *rasteriser* does not run without CUDA: ``_rasterize_to_pixels``
gets the pixel/Gaussian intersections from the CUDA kernel ``rasterize_to_indices_3dgs`` (JIT-compiled,
``gsplat.cuda._wrapper``) and composites with nerfacc, itself a CUDA extension. So the compositing
is done here, with the same conventions as gsplat's kernels (pixel centres at +0.5, alpha =
min(0.999, opacity * exp(-power)), contributions under 1/255 skipped, front to back by depth, a
pixel done once its transmittance would fall to 1e-4):

1. pairs (view, pixel, Gaussian) inside each Gaussian's 3-sigma box with alpha >= 1/255, found without
   gradient;
2. pairs sorted by (view, pixel, depth): one contiguous run of pairs per pixel;
3. transmittance as the exclusive cumulative sum of log(1 - alpha) within each run (float64: runs of
   millions of pairs), so that the whole composite is ordinary autograd.

Memory and time grow with the number of pairs (Gaussians x views x pixels covered), not with
Gaussians x pixels.
"""

from __future__ import annotations

import torch

_MIN_ALPHA = 1.0 / 255.0  # gsplat / 3DGS: a Gaussian that adds less to a pixel is skipped
_MAX_ALPHA = 0.999  # gsplat's kernels (3DGS: 0.99)
_MIN_TRANSMITTANCE = 1e-4  # gsplat's kernels: a pixel is done once a Gaussian would take it below this


def _reference_projection():
    try:
        from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci
    except ImportError as exc:  # optional dependency: the 'gaussians' extra
        raise RuntimeError(
            f"Gaussian rasterisation needs gsplat's projection (pip install 'ddclip-py[gaussians]'): {exc}"
        ) from exc
    return _fully_fused_projection, _quat_scale_to_covar_preci


def project(
    means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor,
    width: int, height: int, eps2d: float = 0.3, near_plane: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """gsplat's reference projection: radii (C, N, 2) int, means2d (C, N, 2), depths (C, N), conics (C, N, 3)."""
    fully_fused_projection, quat_scale_to_covar = _reference_projection()
    covars, _ = quat_scale_to_covar(quats, scales, compute_covar=True, compute_preci=False, triu=False)
    radii, means2d, depths, conics, _ = fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane
    )
    return radii, means2d, depths, conics


@torch.no_grad()
def _pairs(
    radii: torch.Tensor, means2d: torch.Tensor, depths: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor,
    width: int, height: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Every (view, Gaussian, pixel) inside the Gaussian's box that adds at least 1/255 of alpha,
    sorted by (view, pixel, depth): flat (view, Gaussian) index, flat pixel index, x, y."""
    views, count = depths.shape
    dev = depths.device
    # The box where opacity * exp(-power) can reach 1/255: |dx| <= sqrt(2 ln(255 opacity)) sigma_x (sigma
    # from the inverse conic), at most gsplat's 3.33-sigma radii. Faint Gaussians get small boxes.
    a, b, c = conics.unbind(-1)
    det = (a * c - b * b).clamp_min(1e-12)
    extent = torch.sqrt(2 * torch.log((opacities * 255).clamp_min(1.0)))[None]
    half = torch.stack([extent * torch.sqrt(c / det), extent * torch.sqrt(a / det)], -1).minimum(radii)
    low_x = (means2d[..., 0] - half[..., 0]).floor().clamp(0, width).long()
    high_x = (means2d[..., 0] + half[..., 0]).ceil().clamp(0, width).long()
    low_y = (means2d[..., 1] - half[..., 1]).floor().clamp(0, height).long()
    high_y = (means2d[..., 1] + half[..., 1]).ceil().clamp(0, height).long()
    box_w, box_h = high_x - low_x, high_y - low_y
    visible = (radii > 0).all(-1) & (extent > 0)
    area = torch.where(visible, box_w * box_h, 0).flatten()
    owner = torch.repeat_interleave(torch.arange(views * count, device=dev), area)  # flat (view, Gaussian) index
    start = torch.cumsum(area, 0) - area
    offset = torch.arange(len(owner), device=dev) - start[owner]
    w = box_w.flatten()[owner]
    x = low_x.flatten()[owner] + offset % w
    y = low_y.flatten()[owner] + torch.div(offset, w, rounding_mode="floor")
    # Drop the box's corners that add too little, before the sort (it dominates the cost).
    power = _power(means2d, conics, owner, x, y)
    keep = (power >= 0) & (opacities.repeat(views)[owner] * torch.exp(-power) >= _MIN_ALPHA)
    owner, x, y = owner[keep], x[keep], y[keep]
    # Depth rank of each Gaussian within its view: one integer key orders by pixel, then front to back.
    rank = torch.empty_like(depths, dtype=torch.long)
    rank.scatter_(1, depths.argsort(1), torch.arange(count, device=dev).expand(views, count).contiguous())
    pixel = (torch.div(owner, count, rounding_mode="floor") * height + y) * width + x
    key = pixel * count + rank.flatten()[owner]
    if views * height * width * count < 2**31:
        key = key.int()  # a 32-bit sort is about twice as fast
    order = torch.argsort(key)
    return owner[order], pixel[order], x[order], y[order]


def _power(means2d: torch.Tensor, conics: torch.Tensor, owner: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """The Gaussian's exponent at the pixel centres (x + 0.5, y + 0.5), as gsplat's kernels."""
    centre = means2d.reshape(-1, 2)[owner]
    dx, dy = x + 0.5 - centre[:, 0], y + 0.5 - centre[:, 1]
    a, b, c = conics.reshape(-1, 3)[owner].unbind(-1)
    return 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colours: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    background: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render N Gaussians into C views: images (C, H, W, 3) and alpha (C, H, W), differentiable.

    means (N, 3), quats (N, 4) (w, x, y, z; normalised here), scales (N, 3), opacities (N,), colours
    (N, 3); viewmats (C, 4, 4) world-to-camera and Ks (C, 3, 3) in gsplat's convention (OpenCV axes,
    pixel (u, v) centred at (u + 0.5, v + 0.5)); background (3,) or (C, 3), default black.
    """
    views, count = len(viewmats), len(means)
    radii, means2d, depths, conics = project(means, quats, scales, viewmats, Ks, width, height)
    owner, pixel, x, y = _pairs(radii, means2d, depths, conics, opacities, width, height)
    gaussian = torch.remainder(owner, count)
    alpha = (opacities[gaussian] * torch.exp(-_power(means2d, conics, owner, x, y))).clamp(max=_MAX_ALPHA)

    log_t = torch.log1p(-alpha.double())
    inclusive = torch.cumsum(log_t, 0)
    with torch.no_grad():  # first pair of each pixel's run
        first = torch.ones_like(pixel, dtype=torch.bool)
        first[1:] = pixel[1:] != pixel[:-1]
        run = torch.cumsum(first.long(), 0) - 1
        run_start = first.nonzero().flatten()
    before_run = (inclusive - log_t)[run_start][run]  # the sum of everything before this pixel's run
    transmittance = torch.exp(inclusive - log_t - before_run).float()
    with torch.no_grad():  # the Gaussian that would end the pixel, and all behind it, are not added
        live = (inclusive - before_run) > torch.log(torch.tensor(_MIN_TRANSMITTANCE, dtype=torch.float64))
    weight = transmittance * alpha * live

    pixels = views * height * width
    image = colours.new_zeros(pixels, 3).index_add(0, pixel, weight[:, None] * colours[gaussian])
    coverage = weight.new_zeros(pixels).index_add(0, pixel, weight)
    image, coverage = image.reshape(views, height, width, 3), coverage.reshape(views, height, width)
    if background is not None:
        image = image + (1.0 - coverage)[..., None] * background.reshape(-1, 1, 1, 3).to(image)
    return image, coverage
