"""uint8 views -> CLIP-normalised network input, on the model's device.

The published recipe is: /255 -> (resize to 224 if needed) -> crop 208 -> resize 224 -> CLIP
mean/std. The published code crops at a random offset even at inference; here the crop is
centred by default (deterministic, same distribution) and random on request.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .config import PreprocessConfig
from .images import array_to_view

CropMode = Literal["center", "random"]
ResizeMode = Literal["stretch", "pad"]


@dataclass
class Preprocessor:
    """Callable turning a list of (H, W, 3) uint8 views into a (N, 3, S, S) float tensor.

    crop: "center" (deterministic, default) or "random" (published behaviour; one offset per call,
        as torchvision's RandomCrop applies to a batch).
    resize: "stretch" (published: any size is resized to S x S) or "pad" (letterbox to a square on
        white first, keeping the aspect ratio of e.g. a tracker's crop).
    """

    config: PreprocessConfig
    crop: CropMode = "center"
    resize: ResizeMode = "stretch"
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', got {self.crop!r}")
        if self.resize not in ("stretch", "pad"):
            raise ValueError(f"resize must be 'stretch' or 'pad', got {self.resize!r}")

    @property
    def key(self) -> tuple:
        """A snapshot of what the output depends on besides the views (equal iff they preprocess alike)."""
        return (astuple(self.config), self.crop, self.resize)

    def __call__(self, views: list[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
        if not views:
            raise ValueError("no views to preprocess")
        # as encode_views reads them (float in [0, 1] -> uint8); anything else is refused, not misread
        views = [array_to_view(np.asarray(view), f"view {i}") for i, view in enumerate(views)]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, view in enumerate(views):
            by_shape.setdefault(view.shape, []).append(index)
        if len(by_shape) == 1:
            return self.from_uint8(torch.from_numpy(np.stack(views)).to(device, non_blocking=True))
        size = self.config.image_size
        out = torch.empty(len(views), 3, size, size, device=device)
        for indices in by_shape.values():
            pixels = torch.from_numpy(np.stack([views[i] for i in indices])).to(device, non_blocking=True)
            out[indices] = self.from_uint8(pixels)
        return out

    def from_uint8(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, H, W, 3) uint8 -> (n, 3, S, S) network input.

        Normalisation commutes with bilinear resizing (its weights sum to one), so it is applied
        once, fused with the uint8 -> float conversion, on the smallest tensor on the way.
        """
        size = self.config.image_size
        x = pixels.permute(0, 3, 1, 2)
        if self.resize == "pad" and x.shape[-1] != x.shape[-2]:
            height, width = x.shape[-2:]
            side = max(height, width)
            top, left = (side - height) // 2, (side - width) // 2
            x = F.pad(x, (left, side - width - left, top, side - height - top), value=255)
        if x.shape[-2:] == (size, size):
            x = self._normalize(self._crop(x).contiguous())
        else:
            x = self._crop(_resize(self._normalize(x.contiguous()), size))
        return x if x.shape[-2:] == (size, size) else _resize(x, size)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        size, crop = self.config.image_size, self.config.crop_size
        if crop == size:
            return x
        if self.crop == "random":
            top, left = (int(v) for v in torch.randint(0, size - crop + 1, (2,), generator=self.generator))
        else:
            top = left = (size - crop) // 2
        return x[:, :, top : top + crop, left : left + crop]

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 -> (x / 255 - mean) / std as one scale and one shift per channel."""
        std = torch.tensor(self.config.std, device=pixels.device).view(1, 3, 1, 1)
        mean = torch.tensor(self.config.mean, device=pixels.device).view(1, 3, 1, 1)
        return pixels.float().mul_(1.0 / (255.0 * std)).sub_(mean / std)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    # Antialiasing only matters when shrinking; for enlarging, plain bilinear is the same and faster.
    shrink = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
