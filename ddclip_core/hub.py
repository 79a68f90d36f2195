"""Optional download of published weights from Hugging Face. Never used implicitly."""

from __future__ import annotations

import os
from pathlib import Path

PUBLISHED = {
    # name: (repo id, file name, repo type)
    "duoduoclip": ("3dlg-hcvc/DuoduoCLIP", "Four_1to6F_bs1600_LT6.ckpt", "model"),
    "openclip-vit-b-32": ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_model.safetensors", "model"),
    # Objaverse-LVIS: category -> uids, the 1,156 categories of the zero-shot benchmark
    "lvis": ("allenai/objaverse", "lvis-annotations.json.gz", "dataset"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("DDCLIP_CACHE", Path.home() / ".cache" / "ddclip"))


def default_weights() -> Path | None:
    """$DDCLIP_WEIGHTS, else the published checkpoint if it was downloaded, else None."""
    env = os.environ.get("DDCLIP_WEIGHTS")
    if env:
        return Path(env)
    downloaded = cache_dir() / PUBLISHED["duoduoclip"][1]
    return downloaded if downloaded.is_file() else None


def download(name: str = "duoduoclip", folder: str | os.PathLike | None = None) -> Path:
    """Download published weights into ``folder`` (default: the ddclip cache) and return the path."""
    if name not in PUBLISHED:
        raise ValueError(f"unknown weights {name!r}; known: {', '.join(PUBLISHED)}")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:
        raise RuntimeError("downloading needs huggingface_hub: pip install 'ddclip[download]'") from exc
    repo, filename, repo_type = PUBLISHED[name]
    target = Path(folder) if folder else cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, repo_type=repo_type, local_dir=target))
    except LocalEntryNotFoundError as exc:
        raise ConnectionError(
            f"cannot download {repo}/{filename}: Hugging Face is not reachable from this machine. "
            f"Download it elsewhere and pass its path as weights (or put it at {target / filename})."
        ) from exc
    except OSError as exc:
        raise ConnectionError(f"cannot download {repo}/{filename}: {exc}") from exc
