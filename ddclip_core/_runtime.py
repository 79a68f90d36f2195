"""Device and precision resolution shared by the model and the command line."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["fp32", "fp16", "bf16"]
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else is checked, not silently replaced."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here; use device='cpu' or 'auto'")
    return resolved


def check_precision(precision: str, allow_auto: bool = False) -> Precision:
    """A concrete precision, or "auto" where allowed (resolved by ``DuoduoCLIP.set_precision``)."""
    allowed = ("fp32", "fp16", "bf16", "auto") if allow_auto else ("fp32", "fp16", "bf16")
    if precision not in allowed:
        names = ", ".join(repr(name) for name in allowed)
        raise ValueError(f"precision must be one of {names}, got {precision!r}")
    return precision  # type: ignore[return-value]


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Mixed precision where asked: weights stay fp32, matmuls and attention run in 16 bit."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])
