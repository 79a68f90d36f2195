"""GS-CLIP encoder checkpoints: one safetensors file, the config JSON in its metadata. Never pickle."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import atomic_path
from ..text_space import decode_probe, encode_probe
from ..weights import CheckpointError, check_state_dict
from .config import GSEncoderConfig
from .encoder import GSCLIPEncoder

FORMAT = "ddclip-gsclip"
FORMAT_VERSION = "1"


def save_gs_encoder(model: GSCLIPEncoder, path: str | os.PathLike) -> Path:
    """Write weights + config (+ the CLIP text space it was trained against, ``model.text_space``, where
    known) to ``path`` (a .safetensors file), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_json()}
    if model.text_space is not None:
        metadata["text_space"] = encode_probe(model.text_space)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def load_gs_encoder(
    path: str | os.PathLike, *, device: str | torch.device = "cpu", config: GSEncoderConfig | None = None
) -> GSCLIPEncoder:
    """Read a checkpoint written by ``save_gs_encoder`` (eval mode, on ``device``).

    config: when given, the file's config must equal it. Any mismatch (another format, another
    architecture, missing / unexpected / mis-shaped tensors) raises CheckpointError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GS encoder checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a GS-CLIP encoder checkpoint (format={metadata.get('format')!r}, "
                              f"expected {FORMAT!r})")  # fmt: skip
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format_version {metadata.get('format_version')!r}")
    try:
        file_config = GSEncoderConfig.from_json(metadata.get("config") or "")
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid GS encoder config in metadata: {exc}") from exc
    if config is not None and config != file_config:
        mine, theirs = config.to_dict(), file_config.to_dict()
        differing = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
        raise CheckpointError(f"{path}: config differs from the one asked for (file, asked): {differing}")
    model = GSCLIPEncoder(file_config)
    check_state_dict(model.state_dict(), state, str(path), "GS encoder")
    model.load_state_dict(state, strict=True)
    if "text_space" in metadata:
        try:
            model.text_space = decode_probe(metadata["text_space"], str(path))
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
    return model.to(device).eval()
