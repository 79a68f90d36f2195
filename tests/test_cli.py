"""The ddclip command line: its commands through the entry point, and as a real process where that matters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddclip_cli import main
from ddclip_core import load_model, save_export
from tests.cli_run import ddclip, ddclip_process
from tests.conftest import make_tiny, published_tiny, random_views


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return save_export(make_tiny(seed=3), tmp_path_factory.mktemp("weights") / "tiny")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for obj in ("mug", "chair"):
        (folder / obj).mkdir()
        for i, view in enumerate(random_views(3, seed=len(obj))):
            Image.fromarray(view).save(folder / obj / f"{i:02d}.png")
    strip = np.concatenate(list(random_views(4, seed=9)), axis=0)
    Image.fromarray(strip).save(folder / "strip.png")
    return folder


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).with_name("ddclip")
    assert script.is_file(), "pip install -e . should install the ddclip console script"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ddclip 0.1.0" in result.stdout
    missing = subprocess.run(
        [str(script), "encode", "/no/such/view.png", "--out", str(tmp_path / "x.npy")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2  # one line, before the model loads (no random-weights warning first)
    assert missing.stderr == "ddclip encode: error: image file not found: /no/such/view.png\n"


def test_help_and_input_errors_answer_before_torch_is_imported():
    """`ddclip --help`, a wrong option or a missing image must not cost the seconds torch takes to import."""
    probe = (
        "import sys\nfrom ddclip_cli import main\n"
        "codes = []\n"
        "for argv in (['encode', '--help'], ['encode', 'v.png', '--views', '0', '-o', 'x'],"
        " ['encode', '/no/such.png', '-o', 'x'], ['memory', 'list', '/no/such/memory']):\n"
        "    try:\n        codes.append(main(argv))\n    except SystemExit as exc:\n        codes.append(exc.code)\n"
        "print(codes, [name for name in ('torch', 'open_clip') if name in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines()[-1] == "[0, 2, 2, 2] []", result.stdout + result.stderr


@pytest.mark.parametrize(
    "command",
    [[], ["encode"], ["text"], ["weights"], ["weights", "download"], ["weights", "info"], ["weights", "export"]],
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: ddclip" in out and "-h, --help" in out


def test_encode_views_of_one_object_matches_the_library(export, images, tmp_path):
    out = tmp_path / "mug.npy"
    files = sorted(str(p) for p in (images / "mug").iterdir())
    result = ddclip("encode", *files, "--weights", str(export), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "1 object(s) x 32" in result.stdout and "3 view(s)" in result.stdout
    model = load_model(export, device="cpu")
    np.testing.assert_allclose(np.load(out), model.encode_views(files).numpy(), atol=1e-5)


def test_encode_folders_and_strips(export, images, tmp_path):
    out = tmp_path / "objects.npy"
    result = ddclip("encode", str(images / "mug"), str(images / "chair"), "--weights", str(export), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert np.load(out).shape == (2, 32)
    out = tmp_path / "strip.npy"
    result = ddclip("encode", str(images / "strip.png"), "--views", "4", "--weights", str(export), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "4 view(s)" in result.stdout
    model = load_model(export, device="cpu")
    views = np.asarray(Image.open(images / "strip.png")).reshape(4, 224, 224, 3)
    np.testing.assert_allclose(np.load(out), model.encode_views(views).numpy(), atol=1e-5)


def test_text(export, tmp_path):
    out = tmp_path / "t.npy"
    result = ddclip("text", "a white couch", "a red mug", "--weights", str(export), "--out", str(out))
    assert result.returncode == 0, result.stderr
    expected = load_model(export, device="cpu").encode_text(["a white couch", "a red mug"]).numpy()
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
    result = ddclip("text", "a mug", "--weights", str(export), "--out", str(tmp_path / "t2"))  # np.save adds .npy
    written = tmp_path / "t2.npy"
    assert result.returncode == 0 and f"wrote {written}:" in result.stdout and written.is_file()


def test_weights_info_and_export(export, tmp_path):
    result = ddclip("weights", "info", str(export))
    assert result.returncode == 0 and "ddclip" in result.stdout and "tiny-test" in result.stdout
    ckpt = tmp_path / "m.ckpt"
    model = make_tiny(seed=3)
    torch.save(
        {
            "state_dict": {f"duoduoclip.{k}": v for k, v in model.clip.state_dict().items()},
            "hyper_parameters": {"ddclip_config": model.config.to_dict()},
        },
        ckpt,
    )
    result = ddclip("weights", "export", str(ckpt), str(tmp_path / "exported"))
    assert result.returncode == 0, result.stderr
    assert load_model(tmp_path / "exported", device="cpu").weights_id == model.weights_id


def test_demo_names_the_shipped_example_objects(export):
    result = ddclip("demo", "--weights", str(export))
    assert result.returncode == 0, result.stderr
    for label in ("a rubber duck", "a teddy bear", "a red mug", "a soccer ball"):
        assert label in result.stdout
    assert "top-1: " in result.stdout and "with 12 view(s)" in result.stdout
    assert "RANDOMLY INITIALISED" not in result.stdout


def test_random_weights_warn_loudly(images, tmp_path):
    result = ddclip_process("encode", str(images / "mug"), "--out", str(tmp_path / "r.npy"))
    assert result.returncode == 0, result.stderr
    assert "RANDOMLY INITIALISED" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["encode", "/no/such/view.png"], "image file not found: /no/such/view.png"),
        (["encode", "{strip}", "--views", "5"], "not divisible by num_views=5"),
        (["encode", "{mug}", "--weights", "/no/such.ckpt"], "weights file not found"),
        (["text", " "], "text 0 is empty"),
        (["encode", "{strip}", "--views", "-3"], "argument --views: must be >= 1, got -3"),  # was one stretched view
        (["encode", "{strip}", "--views", "0"], "argument --views: must be >= 1, got 0"),
        (["encode", "{mug}", "--batch-size", "x"], "argument --batch-size: must be an integer, got 'x'"),
        (["encode", "{mug}", "--weights", "{torch_zip}"], "a torch checkpoint under a .safetensors name"),
        (["text", "a mug", "--weights", ""], "--weights is empty"),  # fell back to random weights
        (["encode", "{mug}", "--out", ""], "argument --out/-o: must not be empty"),  # wrote .npy in the cwd
    ],
)
def test_errors_are_one_clear_line(export, images, tmp_path, args, message):
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.safetensors")  # torch.load then calls safetensors
    paths = {"strip": images / "strip.png", "mug": images / "mug", "torch_zip": tmp_path / "model.safetensors"}
    args = [a.format(**paths) for a in args]
    if "--weights" not in args:
        args += ["--weights", str(export)]
    result = ddclip(*args, "--out", str(tmp_path / "x.npy"))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_offline_download_says_so(tmp_path):
    result = ddclip_process("weights", "download", "--dir", str(tmp_path), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "cannot download 3dlg-hcvc/DuoduoCLIP/Four_1to6F_bs1600_LT6.ckpt" in result.stderr


def test_a_missing_training_dependency_is_named_not_a_missing_command(tmp_path):
    """`ddclip train` stays a command when Lightning cannot be imported, and says what is missing."""
    (tmp_path / "pytorch_lightning.py").write_text("raise ImportError('No module named pytorch_lightning')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    listed = ddclip_process("--help", env=env)
    assert listed.returncode == 0 and "train" in listed.stdout and "data" in listed.stdout
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  root: nowhere\n")
    result = ddclip_process("train", str(config), env=env)
    assert result.returncode == 2
    assert "ddclip train: error: a dependency is missing (No module named pytorch_lightning)" in result.stderr
    assert "Traceback" not in result.stderr


def test_download_all_is_one_command_that_ends_in_a_named_objaverse_bank(tmp_path, monkeypatch):
    """The real path's files, from a stand-in hub holding them in the published layout (tests never download)."""
    from ddclip_core import EmbeddingBank, hub
    from tests.conftest import published_tiny, write_objaverse_release
    from tests.test_bank import write_lvis_and_cap3d

    mirror = tmp_path / "hub"
    published_tiny(mirror)
    uids = [f"{i:032x}" for i in range(6)]
    write_objaverse_release(mirror / hub.EMBEDDINGS, np.random.default_rng(0).normal(size=(6, 32)), uids)
    write_lvis_and_cap3d(mirror, uids)

    def from_mirror(name, folder):
        source = mirror / hub.PUBLISHED[name][1]
        if not source.is_file():
            raise FileNotFoundError(f"{hub.PUBLISHED[name][0]} has no file {source.name} (not published there)")
        target = Path(folder) / hub.PUBLISHED[name][1]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        return target

    monkeypatch.setattr(hub, "download", from_mirror)
    monkeypatch.setenv("DDCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DDCLIP_WEIGHTS", raising=False)
    assert main(["weights", "download", "--name", "all"]) == 0
    assert hub.default_weights() == tmp_path / "cache" / "Four_1to6F_bs1600_LT6.ckpt"
    bank = EmbeddingBank.load(hub.default_bank())
    assert len(bank) == 6 and bank.weights_id == "published:Four_1to6F_bs1600_LT6"
    assert bank.metadata(uids[0])["name"] == "a red ceramic mug with a handle"
    check = load_model(hub.default_weights(), device="cpu")
    bank.check_weights(check, "queries")  # the published checkpoint matches the released embeddings


def test_offline_download_of_everything_fails_fast_and_says_so(tmp_path):
    from ddclip_core import hub

    if hub.reachable():
        pytest.skip("Hugging Face is reachable here, and tests never download")
    result = ddclip("weights", "download", "--name", "all", "--dir", str(tmp_path))
    assert result.returncode == 2 and "Hugging Face is not reachable from this machine" in result.stderr


def test_onnx_options_without_onnx_are_refused(export, tmp_path):
    result = ddclip("weights", "export", str(export), str(tmp_path / "out"), "--onnx-precision", "int8-static")
    assert result.returncode == 2 and "apply to an ONNX export: add --onnx" in result.stderr  # was ignored
    assert not (tmp_path / "out").exists()


def test_eval_view_counts_are_checked_by_name():
    for bad in ("a", "0", "1,-3", "1,,2"):  # before: int()'s message, or 'object 0: empty list of views'
        result = ddclip("eval", "photos", "/nonexistent", "--views", bad)
        assert result.returncode == 2 and "--views: expected comma-separated integers >= 1" in result.stderr


def test_export_command_refuses_a_calibration_folder_without_objects(tmp_path):
    checkpoint = published_tiny(tmp_path, seed=3)
    (tmp_path / "views").mkdir()
    args = ["weights", "export", str(checkpoint), str(tmp_path / "engine"), "--onnx", "--device", "cpu"]
    result = ddclip(*args, "--onnx-precision", "int8-static", "--calibration", str(tmp_path / "views"))
    assert result.returncode != 0 and "no object folders in it (one folder of views per object)" in result.stderr
    assert not (tmp_path / "engine").exists()
    result = ddclip(*args, "--onnx-precision", "fp16", "--calibration", str(tmp_path / "views"))  # before: ignored
    assert result.returncode != 0 and "--calibration applies to --onnx-precision int8-static" in result.stderr
