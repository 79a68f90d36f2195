"""Reading and writing weight files, with the format detected from the bytes, not the name.

Formats:
- ``lightning``: the published Duoduo CLIP checkpoint (``Four_1to6F_bs1600_LT6.ckpt``): a torch
  zip with ``state_dict`` = ``duoduoclip.<open_clip key>`` (+ ``contrastive_loss.logit_scale``)
  and ``hyper_parameters`` = the training config. Our training writes the same layout.
- ``open_clip``: a plain open_clip CLIP state dict, as ``open_clip_pytorch_model.bin`` (torch)
  or ``open_clip_model.safetensors``.
- ``ddclip``: this project's export, a folder with ``model.safetensors`` + ``config.json``
  (the config is also embedded in the safetensors metadata, so the file alone suffices).

Nothing is unpickled beyond plain tensors and containers (``torch.load(weights_only=True)``)
unless the caller passes ``trust_pickle=True``.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_path, write_text_atomically
from .config import DuoduoConfig

PUBLISHED_PREFIX = "duoduoclip."
# Keys of the published checkpoint that are not part of the network (the loss temperature).
PUBLISHED_EXTRA_KEYS = ("contrastive_loss.logit_scale",)
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A weight file that cannot be used: corrupt, wrong architecture, wrong keys or shapes."""


@dataclass
class WeightFile:
    """What was read from a weight file: open_clip-keyed tensors and what the file says about them."""

    path: Path
    format: str
    state_dict: dict[str, torch.Tensor]
    config: DuoduoConfig | None = None  # full config when the file records one
    arch: str | None = None
    layers_threshold: int | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    trained_by_ddclip: bool = False  # a Lightning checkpoint of ddclip's own training (it records its config)


def read_weights(path: str | Path, *, trust_pickle: bool = False) -> WeightFile:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.is_dir():
        return _read_dir(path, trust_pickle)
    with path.open("rb") as handle:
        head = handle.read(16)
    if _looks_like_safetensors(head, path.stat().st_size):
        return _read_safetensors(path)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return _read_torch(path, trust_pickle, zipped=head.startswith(b"PK"))
    raise CheckpointError(f"{path}: not a weight file (neither a torch checkpoint nor safetensors)")


def _read_dir(path: Path, trust_pickle: bool) -> WeightFile:
    for name in (EXPORT_WEIGHTS, "open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (path / name).is_file():
            return read_weights(path / name, trust_pickle=trust_pickle)
    raise FileNotFoundError(f"{path} is a folder without {EXPORT_WEIGHTS} or an open_clip weight file")


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> WeightFile:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file: {exc}") from exc
    if metadata.get("format") == "ddclip":
        sidecar = path.with_name(EXPORT_CONFIG)
        text = metadata.get("config") or (sidecar.read_text() if sidecar.is_file() else None)
        if not text:
            raise CheckpointError(f"{path}: ddclip export without a config (metadata or {EXPORT_CONFIG})")
        try:
            config = DuoduoConfig.from_json(text)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: invalid ddclip config: {exc}") from exc
        return WeightFile(path, "ddclip", state, config=config)
    return WeightFile(path, "open_clip", _strip_module_prefix(state))


def _read_torch(path: Path, trust_pickle: bool, zipped: bool) -> WeightFile:
    try:
        data = torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=zipped)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: holds Python objects other than tensors, refused for safety ({str(exc).splitlines()[0]}). "
            "If you trust this file, pass trust_pickle=True (CLI: --trust-pickle)."
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated torch checkpoint: {exc}") from exc
    except SafetensorError as exc:  # torch.load reads any *.safetensors name as safetensors
        raise CheckpointError(f"{path}: a torch checkpoint under a .safetensors name (torch will not read it)") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(data).__name__}")
    if not all(isinstance(key, str) for key in data) or (
        isinstance(data.get("state_dict"), dict) and not all(isinstance(key, str) for key in data["state_dict"])
    ):
        raise CheckpointError(f"{path}: a checkpoint's keys must be names (strings): not a CLIP checkpoint")
    if "state_dict" in data and isinstance(data["state_dict"], dict):
        return _from_lightning(path, data)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors or len(tensors) != len(data):
        raise CheckpointError(f"{path}: neither a Lightning checkpoint (no 'state_dict') nor a plain state dict")
    return WeightFile(path, "open_clip", _strip_module_prefix(tensors))


def _from_lightning(path: Path, data: dict[str, Any]) -> WeightFile:
    raw = data["state_dict"]
    state, extras, foreign = {}, {}, []
    for key, value in raw.items():
        if key.startswith(PUBLISHED_PREFIX):
            state[key[len(PUBLISHED_PREFIX) :]] = value
        elif key in PUBLISHED_EXTRA_KEYS:
            extras[key] = value
        else:
            foreign.append(key)
    if not state:
        raise CheckpointError(
            f"{path}: Lightning checkpoint without '{PUBLISHED_PREFIX}*' keys: not a Duoduo CLIP checkpoint "
            f"(first keys: {list(raw)[:3]})"
        )
    if foreign:
        raise CheckpointError(f"{path}: unexpected keys in checkpoint state_dict: {_preview(foreign)}")
    hparams = data.get("hyper_parameters") or {}
    if not isinstance(hparams, dict) or not isinstance(hparams.get("model") or {}, dict):
        raise CheckpointError(f"{path}: its hyper_parameters are not a mapping of names: not a Duoduo CLIP checkpoint")
    config = None
    if isinstance(hparams.get("ddclip_config"), dict):
        config = DuoduoConfig.from_dict(hparams["ddclip_config"])
    network = (hparams.get("model") or {}).get("network") or {}
    arch = network.get("base_name") or hparams.get("arch")
    threshold = network.get("layers_threshold", hparams.get("layers_threshold"))
    return WeightFile(
        path,
        "lightning",
        state,
        config=config,
        arch=arch,
        layers_threshold=None if threshold is None else int(threshold),
        extras=extras,
        trained_by_ddclip="train_config" in hparams,
    )


def _strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DDP-saved open_clip checkpoints prefix every key with "module.".
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return state


def _preview(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Raise CheckpointError naming missing keys, unexpected keys and shape mismatches."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [
        f"{k}: file {tuple(given[k].shape)} vs {arch} {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if wrong:
        problems.append(f"shape mismatch (checkpoint of another architecture?): {_preview(wrong, 3)}")
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {arch}: " + "; ".join(problems))


def save_export(model: Any, path: str | Path) -> Path:
    """Write ``model`` as this project's export: ``path/model.safetensors`` + ``path/config.json``."""
    folder = Path(path)
    held = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if held and EXPORT_WEIGHTS not in held:  # an ONNX engine, a data folder: not ours to overwrite
        shown = ", ".join(held[:3])
        raise ValueError(f"{folder}: not empty and not a ddclip export (it holds {shown}): give a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    config_json = model.config.to_json()
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.clip.state_dict().items()}
    metadata = {"format": "ddclip", "format_version": EXPORT_FORMAT_VERSION, "config": config_json}
    with atomic_path(folder / EXPORT_WEIGHTS) as tmp:  # a reader never sees half of the weights
        save_file(state, str(tmp), metadata=metadata)
    write_text_atomically(folder / EXPORT_CONFIG, config_json + "\n")
    return folder


def describe(path: str | Path, *, trust_pickle: bool = False) -> dict[str, Any]:
    """A JSON-friendly summary of a weight file (format, arch, threshold, tensors, parameters)."""
    weights = read_weights(path, trust_pickle=trust_pickle)
    config = weights.config
    return {
        "path": str(weights.path),
        "format": weights.format,
        "arch": config.arch if config else weights.arch,
        "layers_threshold": config.layers_threshold if config else weights.layers_threshold,
        "tensors": len(weights.state_dict),
        "parameters": int(sum(t.numel() for t in weights.state_dict.values())),
        "visual_blocks": len(
            {k.split(".")[3] for k in weights.state_dict if k.startswith("visual.transformer.resblocks.")}
        ),
        "config": json.loads(config.to_json()) if config else None,
    }
