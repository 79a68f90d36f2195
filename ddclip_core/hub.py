"""Optional downloads from Hugging Face: the published weights and the files of the real Objaverse bank.
Never used implicitly; ``ddclip weights download --name all`` fetches everything the real path needs."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)


class RandomWeightsWarning(UserWarning):
    """Issued when a model is built without weights (no file given and none downloaded)."""


EMBEDDINGS = "model_embeddings/Four_1to6F_bs1600_LT6"
PUBLISHED = {
    # name: (repo id, file name, repo type)
    "duoduoclip": ("3dlg-hcvc/DuoduoCLIP", "Four_1to6F_bs1600_LT6.ckpt", "model"),
    # trained on real multi-view photos (MVImgNet), what a robot's camera sees; and on MVPNet
    "duoduoclip-mvimgnet": ("3dlg-hcvc/DuoduoCLIP", "Four_MVImgNet_1to6F_bs1600_LT6.ckpt", "model"),
    "duoduoclip-mvpnet": ("3dlg-hcvc/DuoduoCLIP", "Four_MVPNet_1to6F_bs1600_LT6.ckpt", "model"),
    "openclip-vit-b-32": ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_model.safetensors", "model"),
    # the released shape embeddings of ~800 k Objaverse objects (by the first checkpoint) and their uid map
    "objaverse-embeddings": ("3dlg-hcvc/DuoduoCLIP-data", f"{EMBEDDINGS}/shape_emb_objaverse.h5", "dataset"),
    "objaverse-uids": ("3dlg-hcvc/DuoduoCLIP-data", f"{EMBEDDINGS}/shape_emb_objaverse_model_to_idx.json", "dataset"),
    # Objaverse-LVIS: category -> uids, the 1,156 categories of the zero-shot benchmark
    "lvis": ("allenai/objaverse", "lvis-annotations.json.gz", "dataset"),
    # Cap3D: one caption per Objaverse uid (~785 k), to name what the bank matches
    "cap3d": ("tiange/Cap3D", "Cap3D_automated_Objaverse_full.csv", "dataset"),
}
ALL = (
    "duoduoclip",
    "duoduoclip-mvimgnet",
    "duoduoclip-mvpnet",
    "objaverse-embeddings",
    "objaverse-uids",
    "lvis",
    "cap3d",
)
BANK = "objaverse_bank"


def cache_dir() -> Path:
    return Path(os.environ.get("DDCLIP_CACHE", Path.home() / ".cache" / "ddclip"))


def default_weights() -> Path | None:
    """$DDCLIP_WEIGHTS, else the published checkpoint if it was downloaded, else None."""
    env = os.environ.get("DDCLIP_WEIGHTS")
    if env:
        return Path(env)
    downloaded = cache_dir() / PUBLISHED["duoduoclip"][1]
    return downloaded if downloaded.is_file() else None


def default_bank() -> Path | None:
    """The Objaverse bank made by ``ddclip weights download --name all``, if it was."""
    bank = cache_dir() / BANK
    return bank if (bank / "bank.json").is_file() else None


def reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the hub answers at all (a quick check, so that offline machines fail in seconds)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def download(name: str = "duoduoclip", folder: str | os.PathLike | None = None) -> Path:
    """Download one published file into ``folder`` (default: the ddclip cache) and return its path."""
    if name not in PUBLISHED:
        raise ValueError(f"unknown download {name!r}; known: all, {', '.join(PUBLISHED)}")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as exc:
        raise RuntimeError("downloading needs huggingface_hub: pip install 'ddclip-py[download]'") from exc
    repo, filename, repo_type = PUBLISHED[name]
    target = Path(folder) if folder else cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    offline = (
        f"cannot download {repo}/{filename}: Hugging Face is not reachable from this machine. "
        f"Download it elsewhere and put it at {target / filename}."
    )
    if not reachable():
        raise ConnectionError(offline)
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, repo_type=repo_type, local_dir=target))
    except EntryNotFoundError as exc:
        raise FileNotFoundError(f"{repo} has no file {filename} (not published there)") from exc
    except LocalEntryNotFoundError as exc:
        raise ConnectionError(offline) from exc
    except OSError as exc:
        raise ConnectionError(f"cannot download {repo}/{filename}: {exc}") from exc


def download_all(folder: str | os.PathLike | None = None) -> list[str]:
    """Every file of the real path, then the Objaverse bank made from them (``folder/objaverse_bank``).

    A checkpoint the hub does not have is reported and skipped; anything else missing is an error.
    Returns one line per file for the user.
    """
    from .bank import EmbeddingBank

    target = Path(folder) if folder else cache_dir()
    report, paths = [], {}
    for name in ALL:
        try:
            paths[name] = download(name, target)
            report.append(f"{name}: {paths[name]}")
        except FileNotFoundError as exc:
            if not name.startswith("duoduoclip-"):
                raise
            report.append(f"{name}: skipped ({exc})")
    bank = EmbeddingBank.from_objaverse(
        paths["objaverse-embeddings"], paths["objaverse-uids"], names=paths["lvis"], captions=paths["cap3d"]
    )
    bank.save(target / BANK)
    report.append(f"bank: {target / BANK} ({len(bank)} Objaverse objects, named by Cap3D captions and LVIS categories)")
    return report
