"""Symmetric InfoNCE between shape embeddings and frozen CLIP image / text targets."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature
MAX_LOGIT_SCALE = math.log(100)  # CLIP clamps the scale at 100


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process; gradients flow back to each process's own rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy over scaled cosine similarities; row i of a matches row i of b."""
    logits = logit_scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class ContrastiveLoss(nn.Module):
    """lambda_image * InfoNCE(shape, image target) + lambda_text * InfoNCE(shape, text target).

    One learnable logit scale, shared by both terms (the published recipe). Features are gathered
    across processes with gradients, so every process sees the whole global batch as negatives.
    """

    def __init__(self, lambda_image: float = 1.0, lambda_text: float = 1.0, init_logit_scale: float = INIT_LOGIT_SCALE):
        super().__init__()
        if lambda_image < 0 or lambda_text < 0 or lambda_image + lambda_text == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got {lambda_image}, {lambda_text}")
        self.lambda_image, self.lambda_text = lambda_image, lambda_text
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def forward(
        self, shape: torch.Tensor, image_target: torch.Tensor, text_target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        shape, image_target, text_target = (gather_with_grad(x.float()) for x in (shape, image_target, text_target))
        scale = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
        image = info_nce(shape, image_target, scale) if self.lambda_image else shape.new_zeros(())
        text = info_nce(shape, text_target, scale) if self.lambda_text else shape.new_zeros(())
        total = self.lambda_image * image + self.lambda_text * text
        return {"loss": total, "loss_image": image.detach(), "loss_text": text.detach(), "logit_scale": scale.detach()}
