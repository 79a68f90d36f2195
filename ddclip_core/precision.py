"""precision="auto": the fastest precision whose embeddings agree with fp32, measured on this machine.

Whether 16 bit pays depends on the processor: on a CPU with bf16 matrix units (AMX, AVX512-BF16) it runs
about twice as fast as fp32, elsewhere it is slower than fp32; on CUDA it is always faster. So rather
than guess from flags, the model encodes a few real views (the shipped mug) in fp32 and in each 16-bit
candidate the device supports, and keeps a candidate only if its embedding's cosine to fp32 is at
least ``MIN_COSINE`` and it is at least ``MIN_SPEEDUP`` faster. It takes about ten forward passes of
six views, once, when the model is loaded; on CUDA of 8 objects of six views (never run here: no GPU),
because one object's pass on a GPU is mostly kernel launches, which take as long in any precision.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import torch

from ._prepacked import packing_available
from .images import read_image, split_strip

if TYPE_CHECKING:
    from .model import DuoduoCLIP

MIN_COSINE = 0.999
MIN_SPEEDUP = 1.1  # below this the difference is within a shared machine's noise: keep fp32
PROBE_VIEWS = 6
PROBE_OBJECTS = {"cuda": 8}  # objects per probe pass by device type (1 elsewhere): a batch as the node's


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str
    reason: str  # one line for the log: what was measured


def candidates(device: torch.device) -> list[str]:
    """16-bit precisions worth measuring on this device."""
    if device.type == "cuda":  # (never run here: no GPU) native bf16 from compute capability 8 (Ampere) on:
        # is_bf16_supported() also says yes for emulated bf16 (V100, T4, Jetson Xavier), where fp16 is fast
        major, _ = torch.cuda.get_device_capability(device)
        return ["bf16", "fp16"] if major >= 8 else ["fp16"]
    if device.type == "cpu" and packing_available(device, "bf16"):
        return ["bf16"]  # oneDNN has bf16 kernels for this CPU (AVX512-BF16 or AMX)
    return []


def probe_views() -> list:
    assets = resources.files("ddclip_core") / "assets"
    return split_strip(read_image(assets / "mug.jpg"), 12, "mug.jpg")[:PROBE_VIEWS]


def probe_objects(device: torch.device) -> list[list]:
    """What each probe pass encodes on this device: the mug's six views, once or as a batch."""
    return [probe_views()] * PROBE_OBJECTS.get(device.type, 1)


def choose_precision(model: DuoduoCLIP, repeats: int = 3) -> PrecisionChoice:
    """Measure fp32 and the device's 16-bit candidates on real views; return the fastest at parity."""
    options = candidates(model.device)
    if not options:
        return PrecisionChoice("fp32", f"fp32 (no 16-bit kernels for {_device_name(model.device)})")
    objects = probe_objects(model.device)
    previous = model.precision, model.precision_reason
    try:
        reference, fp32_time = _measure(model, "fp32", objects, repeats)
        best = PrecisionChoice("fp32", "")
        best_time = fp32_time
        notes = []
        for precision in options:
            try:
                embedding, seconds = _measure(model, precision, objects, repeats)
            except Exception as exc:  # a 16-bit kernel this device lacks: that candidate is out, fp32 stays
                notes.append(f"{precision} failed ({type(exc).__name__}: {exc})")
                continue
            cosine = float((embedding * reference).sum())
            notes.append(f"{precision} {fp32_time / seconds:.2f}x fp32's speed, cosine {cosine:.5f}")
            if cosine >= MIN_COSINE and seconds * MIN_SPEEDUP <= best_time:
                best, best_time = PrecisionChoice(precision, ""), seconds
    finally:
        model.precision, model.precision_reason = previous  # as it was, the reason too
    reason = f"{best.precision} on {_device_name(model.device)} ({'; '.join(notes)})"
    return PrecisionChoice(best.precision, reason)


def _measure(model: DuoduoCLIP, precision: str, objects: list[list], repeats: int) -> tuple[torch.Tensor, float]:
    model.set_precision(precision)
    embedding = model.encode_views(objects)  # warm-up: packs weights, allocates
    best = float("inf")
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        start = time.perf_counter()
        model.encode_views(objects)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        best = min(best, time.perf_counter() - start)
    return embedding[0], best


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"
