"""What an ONNX export folder holds: its file names, format, precisions, and the error for a bad one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

FORMAT = "ddclip-onnx"
FORMAT_VERSION = "1"
CONFIG = "config.json"
GRAPHS = {"per_view": "per_view.onnx", "cross_view": "cross_view.onnx", "text": "text.onnx"}
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static")


class OnnxExportError(ValueError):
    """An ONNX export that cannot be made or used: corrupt or foreign graphs, a config that does not match."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(2**22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_onnx_export(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX export folder (or a file in one), judged by its config.json."""
    folder = Path(path).expanduser()
    folder = folder if folder.is_dir() else folder.parent
    try:
        return json.loads((folder / CONFIG).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False
