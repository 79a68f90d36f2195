"""Loading the published checkpoint layout, OpenCLIP files and our export; refusing bad files."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

import ddclip_core
from ddclip_core import CheckpointError, RandomWeightsWarning, load_model, save_export
from ddclip_core.weights import describe, read_weights
from tests.conftest import make_tiny, random_views, write_published_checkpoint


def _same_embeddings(a, b, views):
    torch.testing.assert_close(a.encode_views(views), b.encode_views(views), rtol=0, atol=0)


def test_published_lightning_checkpoint_round_trip(vit_b32, tmp_path):
    path = write_published_checkpoint(vit_b32, tmp_path / "Four_1to6F_bs1600_LT6.ckpt")
    weights = read_weights(path)
    assert weights.format == "lightning" and weights.arch == "ViT-B-32" and weights.layers_threshold == 6
    assert set(weights.state_dict) == set(vit_b32.clip.state_dict())  # no missing, no unexpected keys
    assert set(weights.extras) == {"contrastive_loss.logit_scale"}
    model = load_model(path, device="cpu")
    assert model.layers_threshold == 6 and model.config.arch == "ViT-B-32"
    views = random_views(3, seed=7)
    _same_embeddings(model, vit_b32, views)
    torch.testing.assert_close(model.encode_text("a white couch"), vit_b32.encode_text("a white couch"))


def test_threshold_comes_from_the_checkpoint_and_can_be_overridden(tmp_path):
    source = make_tiny(layers_threshold=1)
    hparams = {"ddclip_config": source.config.to_dict(), "model": {"network": {"layers_threshold": 1}}}
    path = write_published_checkpoint(source, tmp_path / "tiny.ckpt", hyper_parameters=hparams)
    assert load_model(path, device="cpu").layers_threshold == 1
    with pytest.warns(UserWarning, match="trained with layers_threshold=1"):
        assert load_model(path, device="cpu", layers_threshold=3).layers_threshold == 3


def test_checkpoint_of_another_architecture_names_the_shapes(tmp_path):
    tiny = make_tiny()
    hparams = {"model": {"network": {"base_name": "ViT-B-32", "layers_threshold": 6}}}
    path = write_published_checkpoint(tiny, tmp_path / "other.ckpt", hyper_parameters=hparams)
    with pytest.raises(CheckpointError, match=r"shape mismatch .*visual\.\w+.*file \(.*\) vs ViT-B-32"):
        load_model(path, device="cpu")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    tiny = make_tiny()
    hparams = {"ddclip_config": tiny.config.to_dict()}
    path = write_published_checkpoint(
        tiny, tmp_path / "extra.ckpt", hparams, **{"duoduoclip.visual.bogus": torch.zeros(1)}
    )
    with pytest.raises(CheckpointError, match=r"unexpected keys: visual\.bogus"):
        load_model(path, device="cpu")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["state_dict"]["duoduoclip.visual.ln_post.weight"]
    del checkpoint["state_dict"]["duoduoclip.visual.bogus"]
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"missing keys: visual\.ln_post\.weight"):
        load_model(path, device="cpu")
    checkpoint["state_dict"]["model.head.weight"] = torch.zeros(1)
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys in checkpoint state_dict: model\.head\.weight"):
        load_model(path, device="cpu")


def test_lightning_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "resnet.ckpt"
    torch.save({"state_dict": {"backbone.conv.weight": torch.zeros(2)}, "hyper_parameters": {}}, path)
    with pytest.raises(CheckpointError, match="not a Duoduo CLIP checkpoint"):
        load_model(path, device="cpu")


@pytest.mark.parametrize("suffix", [".bin", ".safetensors", ".weights"])
def test_open_clip_weight_files_load_whatever_their_name(vit_b32, tmp_path, suffix):
    state = OrderedDict((k, v.clone().contiguous()) for k, v in vit_b32.clip.state_dict().items())
    path = tmp_path / f"open_clip_pytorch_model{suffix}"
    if suffix == ".safetensors" or suffix == ".weights":  # .weights: safetensors bytes under another name
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = load_model(path, device="cpu")
    assert read_weights(path).format == "open_clip"
    assert model.layers_threshold == 6  # an OpenCLIP file records none: the published default
    _same_embeddings(model, vit_b32, random_views(2, seed=8))


def test_ddp_module_prefix_is_stripped(tmp_path):
    tiny = make_tiny()
    path = tmp_path / "ddp.bin"
    torch.save({f"module.{k}": v for k, v in tiny.clip.state_dict().items()}, path)
    assert "visual.proj" in read_weights(path).state_dict


def test_own_export_round_trip(tmp_path):
    source = make_tiny(layers_threshold=3, seed=9)
    folder = save_export(source, tmp_path / "export")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    views = random_views(4, seed=9)
    for target in (folder, folder / "model.safetensors"):
        model = load_model(target, device="cpu")
        assert model.config == source.config
        _same_embeddings(model, source, views)
        assert model.weights_id == source.weights_id
    info = describe(folder)
    assert info["format"] == "ddclip" and info["layers_threshold"] == 3 and info["visual_blocks"] == 4


def test_weights_id_tracks_weights_and_threshold():
    a, b = make_tiny(seed=1), make_tiny(seed=2)
    assert a.weights_id != b.weights_id
    assert a.weights_id == make_tiny(seed=1).weights_id
    assert a.weights_id != make_tiny(layers_threshold=3, seed=1).weights_id


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused_unless_trusted(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as handle:
        torch.save({"state_dict": {}, "payload": _Payload()}, handle)
    with pytest.raises(CheckpointError, match="refused for safety.*trust_pickle=True"):
        load_model(path, device="cpu")
    assert "must never run" not in capsys.readouterr().out


def test_corrupt_files_give_clear_errors(tmp_path, vit_b32):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        load_model(missing)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"hello, I am not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a weight file"):
        load_model(junk)
    whole = write_published_checkpoint(make_tiny(), tmp_path / "whole.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(truncated)
    state = {k: v.contiguous() for k, v in make_tiny().clip.state_dict().items()}
    good = tmp_path / "m.safetensors"
    save_file(state, str(good))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_model(bad)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="folder without model.safetensors"):
        load_model(empty_dir)
    pickled_list = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], pickled_list)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_model(pickled_list)
    int_keys = tmp_path / "intkey.pt"
    torch.save({0: torch.zeros(1)}, int_keys)  # before: AttributeError 'int' object has no attribute 'startswith'
    with pytest.raises(CheckpointError, match="keys must be names"):
        load_model(int_keys)
    listed = tmp_path / "listed.ckpt"
    state = {f"duoduoclip.{k}": v for k, v in make_tiny().clip.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": ["not", "a", "mapping"]}, listed)
    with pytest.raises(CheckpointError, match="hyper_parameters are not a mapping"):  # before: AttributeError
        load_model(listed)


def test_no_weights_is_loud():
    with pytest.warns(RandomWeightsWarning, match="RANDOMLY INITIALISED"):
        model = load_model(device="cpu")
    assert model.weights_source is None


def test_device_and_precision_are_checked():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        with pytest.raises(ValueError, match="precision must be"):
            load_model(precision="fp8")
        with pytest.raises(ValueError, match="unknown device"):
            load_model(device="toaster")
        if not torch.cuda.is_available():
            with pytest.raises(ValueError, match="CUDA is not available"):
                load_model(device="cuda")
        assert load_model(device="auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_package_has_no_ros_import():
    import pathlib

    root = pathlib.Path(ddclip_core.__file__).parent
    for source in root.rglob("*.py"):
        text = source.read_text()
        assert "import rclpy" not in text and "from rclpy" not in text, source


def test_pickle_module_not_used_for_loading():
    # read_weights must never fall back to a bare unpickle
    import inspect

    from ddclip_core import weights

    assert "pickle.load" not in inspect.getsource(weights)


def test_an_export_never_overwrites_a_folder_that_is_not_an_export(tmp_path):
    model = make_tiny()
    engine = tmp_path / "engine"  # an ONNX engine, say: before, silently turned into neither kind
    engine.mkdir()
    (engine / "per_view.onnx").write_bytes(b"onnx")
    with pytest.raises(ValueError, match=r"engine: not empty and not a ddclip export \(it holds per_view.onnx\)"):
        save_export(model, engine)
    assert sorted(p.name for p in engine.iterdir()) == ["per_view.onnx"]
    first = save_export(model, tmp_path / "export")
    again = save_export(make_tiny(seed=1), first)  # an export is replaced, file by file atomically
    assert load_model(again).weights_id == make_tiny(seed=1).weights_id
    assert sorted(p.name for p in again.iterdir()) == ["config.json", "model.safetensors"]
