"""Which CLIP text space embeddings live in: a fingerprint made of the text tower's own answers.

A second encoder trained against frozen CLIP targets (GS-CLIP) can only be fused with, or scored against
the text of, a view model whose text tower made those targets. Weight ids cannot tell: a fine-tuned
Duoduo model has new image weights (a new id) and CLIP's text tower unchanged, while two CLIPs of the
same width have different text spaces. So the fingerprint is functional: the unit text embeddings of a
few fixed prompts, which every backend (PyTorch, ONNX Runtime, any precision) can recompute and compare.
Different CLIPs' spaces are unrelated (cosines near 0); one tower in fp32, fp16 or bf16 agrees to > 0.999.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from .identity import WeightsMismatchError

PROBE_VERSION = 1
PROBE_PROMPTS = (
    "a photo of a chair",
    "a red mug",
    "a wooden table",
    "a toy car",
    "a green plant in a pot",
    "a laptop computer",
    "an old leather boot",
    "a 3D model of a dragon",
)
MIN_COSINE = 0.99


class TextSpaceMismatch(WeightsMismatchError):
    """An encoder trained against one CLIP text tower, used with a model whose text tower differs."""


def text_probe(model: Any) -> np.ndarray:
    """(len(PROBE_PROMPTS), embed_dim) float32 unit text embeddings of ``model`` (anything with
    ``encode_text``): the fingerprint of its text space."""
    embeddings = model.encode_text(list(PROBE_PROMPTS), normalize=True)
    return np.asarray(embeddings.detach().cpu().float().numpy(), dtype=np.float32)


def encode_probe(probe: np.ndarray) -> str:
    """A probe as one JSON string (fp16, base64): fits safetensors metadata and h5 attributes alike."""
    probe = _checked(np.asarray(probe, dtype=np.float32), "probe")
    data = base64.b64encode(probe.astype("<f2").tobytes()).decode("ascii")
    return json.dumps({"version": PROBE_VERSION, "shape": list(probe.shape), "fp16": data})


def decode_probe(text: str | bytes, where: str) -> np.ndarray:
    """The probe written by ``encode_probe``; ValueError naming ``where`` for anything else."""
    try:
        record = json.loads(text)
        if record.get("version") != PROBE_VERSION:
            raise ValueError(f"version {record.get('version')!r}, this ddclip reads {PROBE_VERSION}")
        rows, dim = (int(n) for n in record["shape"])
        probe = np.frombuffer(base64.b64decode(record["fp16"], validate=True), dtype="<f2").astype(np.float32)
        probe = probe.reshape(rows, dim)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{where}: unreadable text-space probe: {exc}") from exc
    return _checked(probe, where)


def _checked(probe: np.ndarray, where: str) -> np.ndarray:
    if probe.ndim != 2 or probe.shape[0] != len(PROBE_PROMPTS) or probe.shape[1] < 1:
        raise ValueError(f"{where}: a text-space probe has {len(PROBE_PROMPTS)} rows, got shape {probe.shape}")
    norms = np.linalg.norm(probe, axis=1)
    if not np.all(np.isfinite(probe)) or np.any(np.abs(norms - 1.0) > 1e-2):
        raise ValueError(f"{where}: a text-space probe holds unit vectors, got norms {np.round(norms, 3).tolist()}")
    return probe


def probe_agreement(recorded: np.ndarray, probe: np.ndarray) -> float:
    """The smallest cosine between the two probes' rows (-1 when their widths differ)."""
    if recorded.shape != probe.shape:
        return -1.0
    cosines = np.sum(recorded * probe, axis=1) / (np.linalg.norm(recorded, axis=1) * np.linalg.norm(probe, axis=1))
    return float(np.min(cosines))


def check_text_space(recorded: np.ndarray | None, model: Any, what: str, advice: str = "") -> bool:
    """Raise TextSpaceMismatch (naming ``what``, then ``advice``) unless ``model``'s text tower is the one
    ``recorded`` came from.

    Returns False when nothing was recorded (made before probes were kept): unknown, the caller says so;
    True when checked."""
    if recorded is None:
        return False
    agreement = probe_agreement(recorded, text_probe(model))
    if agreement < MIN_COSINE:
        raise TextSpaceMismatch(
            f"{what} is in another CLIP text space than this model's: their text towers' answers to the same "
            f"prompts agree to cosine {agreement:.3f} (>= {MIN_COSINE} for one space).{' ' + advice if advice else ''}"
        )
    return True
