"""ONNX export and the ONNX Runtime backend (CPU provider): parity with PyTorch fp32, the same mixed-view-count
batching, permutation invariance, padding equivalence, the view cache, 16/8-bit engines, bad exports refused.

One tiny model is exported once (through the command line, from a published-layout checkpoint) for the file.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from ddclip_cli import main as ddclip
from ddclip_core import CheckpointError, load_model
from ddclip_core.labels import LabelSet
from ddclip_core.onnx.backend import OnnxRuntimeCLIP
from ddclip_core.onnx.export import export_onnx
from ddclip_core.onnx.files import OnnxExportError
from ddclip_core.onnx.providers import ProviderError, ShapeLimits, tensorrt_profile, with_profile
from ddclip_core.perception import PerceptionConfig, PerceptionSettings, StartupError, loading, open_perception
from ddclip_core.view_cache import ViewTokenCache
from tests.conftest import published_tiny, random_views

TOLERANCE = 1e-4  # the bound: max abs error on unit embeddings


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(PyTorch model, its fp32 ONNX engine folder), the engine written by `ddclip weights export --onnx`."""
    folder = tmp_path_factory.mktemp("onnx")
    checkpoint = published_tiny(folder, seed=3)
    assert ddclip(["weights", "export", str(checkpoint), str(folder / "engine"), "--onnx", "--device", "cpu"]) == 0
    return load_model(checkpoint, device="cpu"), folder / "engine"


@pytest.fixture(scope="module")
def engine(exported):
    return load_model(exported[1], backend="onnxruntime", device="cpu")


def test_export_records_the_weights_and_checks_itself(exported, engine):
    model, folder = exported
    config = json.loads((folder / "config.json").read_text())
    assert config["weights_id"] == model.weights_id == engine.weights_id
    assert engine.identity == model.identity  # published:<stem> alias included: banks of the release match
    assert config["model"]["layers_threshold"] == 2 and config["opset"] >= 23
    assert config["check"]["views_max_abs_error"] <= TOLERANCE and config["check"]["text_max_abs_error"] <= TOLERANCE
    for name in ("per_view.onnx", "cross_view.onnx", "text.onnx"):
        onnx.checker.check_model(str(folder / name))
    graph = onnx.load(str(folder / "cross_view.onnx"), load_external_data=False)
    assert "Attention" in {node.op_type for node in graph.graph.node}  # scaled dot-product attention kept whole
    assert [dim.dim_param for dim in graph.graph.input[0].type.tensor_type.shape.dim[:2]] == ["objects", "views"]
    assert engine.embed_dim == model.embed_dim and engine.active_providers == ["CPUExecutionProvider"]


@pytest.mark.parametrize("views", [1, 5, 12])
def test_views_match_pytorch_fp32(exported, engine, views):
    model = exported[0]
    objects = random_views(views, seed=views)
    torch.testing.assert_close(engine.encode_views(objects), model.encode_views(objects), rtol=0, atol=TOLERANCE)


def test_mixed_batch_and_text_match_pytorch_fp32(exported, engine):
    model = exported[0]
    objects = [random_views(count, seed=10 + count) for count in (3, 1, 12, 5)]
    ours = engine.encode_views(objects, batch_size=3)  # a mixed chunk, then a chunk of one
    torch.testing.assert_close(ours, model.encode_views(objects), rtol=0, atol=TOLERANCE)
    texts = ["a red mug", "a white couch on a wooden floor", "duck"]
    torch.testing.assert_close(engine.encode_text(texts), model.encode_text(texts), rtol=0, atol=TOLERANCE)


def test_permutation_invariance_and_padding_equivalence(engine):
    views = random_views(6, seed=20)
    alone = engine.encode_views(views)
    torch.testing.assert_close(engine.encode_views(views[[5, 2, 0, 4, 1, 3]]), alone, rtol=0, atol=1e-5)
    other = random_views(2, seed=21)
    together = engine.encode_views([other, views])  # the 2-view object padded to 6 in the cross-view graph
    torch.testing.assert_close(together[1:], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(together[:1], engine.encode_views(other), rtol=0, atol=1e-5)
    pixels = torch.zeros(2, 6, 3, 224, 224)
    pixels[0, :2], pixels[1] = engine.preprocessor(list(other)), engine.preprocessor(list(views))
    pixels[0, 2:] = 7.0  # whatever stands in padded slots does not matter
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, :2], mask[1] = True, True
    torch.testing.assert_close(engine.encode_views(pixels, view_mask=mask), together, rtol=0, atol=1e-5)


def test_view_cache_works_unchanged_on_the_engine(exported, engine):
    model = exported[0]
    views = list(random_views(5, seed=30))
    torch.testing.assert_close(engine.view_tokens(views[:2]), model.view_tokens(views[:2]), rtol=0, atol=1e-4)
    cache = ViewTokenCache(engine, storage="fp32")
    cache.encode([("a", [0, 1, 2], views[:3])])
    again = cache.encode([("a", [0, 1, 2, 3, 4], views), ("b", [0], views[:1])])
    assert cache.stats.hits == 3 and cache.stats.misses == 6
    torch.testing.assert_close(again, model.encode_views([views, views[:1]]), rtol=0, atol=TOLERANCE)
    before = engine.preprocessor
    engine.set_preprocessing(resize="pad")  # other tokens for the same views: the kept ones go
    try:
        padded = cache.encode([("a", [0, 1, 2, 3, 4], views)])
        assert cache.stats.invalidations == 1 and cache.stats.misses == 6 + 5
        torch.testing.assert_close(padded, engine.encode_views(views), rtol=0, atol=1e-5)
    finally:
        engine.preprocessor = before


def test_16_and_8_bit_engines_stay_close_to_fp32(exported, tmp_path):
    model, folder = exported
    objects = [random_views(count, seed=40 + count) for count in (2, 6)]
    reference = model.encode_views(objects)
    labels = LabelSet(["a mug", "a chair"], templates="simple")
    label_matrices = []
    for precision, floor in (("fp16", 0.999), ("int8-dynamic", 0.99), ("int8-static", 0.99)):
        calibration = [list(random_views(4, seed=50)), list(random_views(2, seed=51))]  # objects of views
        out = export_onnx(model, tmp_path / precision, precision=precision, reuse=folder, calibration=calibration)
        engine = load_model(out, backend="onnxruntime", device="cpu")
        assert engine.precision == precision and engine.weights_id == model.weights_id
        together = engine.encode_views(objects)
        cosine = (together * reference).sum(-1)
        assert cosine.min() >= floor, (precision, cosine)
        alone = torch.cat([engine.encode_views([views]) for views in objects])
        assert torch.equal(together, alone), precision  # before: int8-dynamic differed by up to 6e-3
        if precision == "fp16":  # its weights are half floats (on a tiny model its drift can round to cosine 1)
            for graph in ("per_view.onnx", "cross_view.onnx"):
                types = {init.data_type for init in onnx.load(str(out / graph)).graph.initializer}
                assert onnx.TensorProto.FLOAT16 in types and onnx.TensorProto.FLOAT not in types, (graph, types)
        else:
            assert cosine.min() < 1 - 1e-7, f"{precision}: no drift at all, so not really {precision}"
        assert json.loads((out / "config.json").read_text())["check"]["views_min_cosine"] >= floor
        label_matrices.append(labels.embeddings(engine, cache=False))
    # every engine keeps the fp32 text graph: one label matrix for all (before: one per engine precision,
    # and the fp16 engine shared the torch model's fp16 key)
    assert len(labels._in_memory) == 1 and all(np.array_equal(m, label_matrices[0]) for m in label_matrices)
    with pytest.raises(ValueError, match="precision is fixed at export"):
        load_model(tmp_path / "fp16", backend="onnxruntime", device="cpu", precision="bf16")
    with pytest.raises(OnnxExportError, match="reuse needs an fp32 engine"):
        export_onnx(model, tmp_path / "again", precision="fp16", reuse=tmp_path / "int8-static")
    assert not (tmp_path / "again").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _copy(folder, tmp_path, name="copy"):
    return shutil.copytree(folder, tmp_path / name)


def test_truncated_or_foreign_graph_is_refused(exported, tmp_path):
    copy = _copy(exported[1], tmp_path)
    data = (copy / "per_view.onnx").read_bytes()
    (copy / "per_view.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxExportError, match=r"per_view.onnx: not a valid ONNX model \(truncated or corrupt"):
        OnnxRuntimeCLIP(copy, device="cpu")
    node = helper.make_node("Relu", ["x"], ["y"])
    value = helper.make_tensor_value_info
    graph = helper.make_graph([node], "g", [value("x", TensorProto.FLOAT, [1])], [value("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(copy / "per_view.onnx"))
    with pytest.raises(OnnxExportError, match="per_view.onnx: not an ONNX graph exported by ddclip"):
        OnnxRuntimeCLIP(copy, device="cpu")


def test_config_that_does_not_match_the_graphs_is_refused(exported, tmp_path):
    copy = _copy(exported[1], tmp_path)
    config = json.loads((copy / "config.json").read_text())
    swapped = dict(config, graphs={**config["graphs"], "per_view": config["graphs"]["cross_view"]})
    (copy / "config.json").write_text(json.dumps(swapped))
    with pytest.raises(OnnxExportError, match="the graph is the cross_view part .* expects the per_view part"):
        OnnxRuntimeCLIP(copy, device="cpu")
    (copy / "config.json").write_text(json.dumps(dict(config, weights_id="ViT-B-32-lt6-0123456789abcdef")))
    with pytest.raises(OnnxExportError, match="does not match config.json: the graph is the per_view part of weights"):
        OnnxRuntimeCLIP(copy, device="cpu")
    config["graphs"]["text"]["sha256"] = "0" * 64
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(OnnxExportError, match="text.onnx does not match config.json: its sha256 differs"):
        OnnxRuntimeCLIP(copy, device="cpu")
    (copy / "config.json").write_text(json.dumps({"format": "ddclip"}))
    with pytest.raises(OnnxExportError, match="not the config of an ONNX export"):
        OnnxRuntimeCLIP(copy, device="cpu")


def test_missing_provider_wrong_backend_and_wrong_folder_each_give_one_clear_error(exported, tmp_path):
    model, folder = exported
    with pytest.raises(ProviderError, match="TensorrtExecutionProvider not installed in this onnxruntime"):
        load_model(folder, backend="onnxruntime", providers=["tensorrt", "CPUExecutionProvider"])
    with pytest.raises(ProviderError, match="device 'cuda' asks for a GPU"):
        load_model(folder, backend="onnxruntime", device="cuda")
    with pytest.raises(CheckpointError, match="is an ONNX export: load it with backend='onnxruntime'"):
        load_model(folder)
    with pytest.raises(ValueError, match="backend must be 'torch' or 'onnxruntime'"):
        load_model(folder, backend="tensorflow")
    with pytest.raises(OnnxExportError, match="is not an ONNX export .* `ddclip weights export SRC OUT --onnx`"):
        load_model(tmp_path, backend="onnxruntime")
    with pytest.raises(ValueError, match="exported with layers_threshold=2, not 6"):
        load_model(folder, backend="onnxruntime", device="cpu", layers_threshold=6)
    with pytest.raises(ValueError, match="backend must be torch or onnxruntime, got 'tensorrt'"):
        PerceptionConfig(backend="tensorrt")
    with pytest.raises(StartupError, match="weights: .* is not an ONNX export"):
        open_perception(PerceptionConfig(weights=str(tmp_path), backend="onnxruntime", device="cpu"))
    (tmp_path / "safetensors").mkdir()
    (tmp_path / "safetensors" / "config.json").write_text(model.config.to_json())  # a ddclip safetensors export
    with pytest.raises(FileExistsError, match="exists and is not an ONNX export: refusing to replace it"):
        export_onnx(model, tmp_path / "safetensors")
    assert engine_of_cpu(folder).encode_views(np.zeros((1, 224, 224, 3), np.uint8)).shape == (1, model.embed_dim)


def engine_of_cpu(folder):
    return load_model(folder, backend="onnxruntime", providers=["cpu"])


def test_node_runs_end_to_end_on_onnxruntime_over_dds(exported, tmp_path):
    """The node with backend:=onnxruntime: embeddings equal PyTorch's, the bank made by PyTorch is accepted."""
    pytest.importorskip("rclpy", reason="rclpy not installed: scripts/setup.sh installs ROS 2 from PyPI")
    import rclpy
    from ddclip.msg import ObjectMatches, ObjectView, ShapeEmbedding
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from ddclip_ros.image_conversion import rgb_to_image
    from ddclip_ros.node_process import stop_node
    from ddclip_ros.spin import spin_until
    from tests.ros_node import launch, node_params, ros_env

    model, folder = exported
    env = ros_env(tmp_path)
    params = node_params(tmp_path)  # its tiny model, bank and labels come from the same seed as ``exported``
    params.update(weights=str(folder), backend="onnxruntime", memory_path="")
    process = launch(params, env)
    views = random_views(3, seed=60)
    rclpy.init()
    try:
        client = rclpy.create_node("ddclip_onnx_test_client")
        embeddings: list[ShapeEmbedding] = []
        matches: list[ObjectMatches] = []
        client.create_subscription(ShapeEmbedding, "ddclip/embeddings", embeddings.append, 10)
        client.create_subscription(ObjectMatches, "ddclip/matches", matches.append, 10)
        publisher = client.create_publisher(
            ObjectView, "ddclip/views", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        )
        started = spin_until(client, lambda: publisher.get_subscription_count() > 0 or process.poll() is not None, 120)
        assert started and process.poll() is None, stop_node(process)
        for i, view in enumerate(views):
            message = ObjectView(track_id="mug-1", track_ended=i == len(views) - 1)
            message.header.frame_id = "camera"
            message.image = rgb_to_image(view)
            publisher.publish(message)
        done = lambda: any(m.num_views == 3 for m in matches) and any(e.num_views == 3 for e in embeddings)  # noqa: E731
        assert spin_until(client, done, 60), f"got {[(e.track_id, e.num_views) for e in embeddings]}"
        client.destroy_node()
    finally:
        rclpy.try_shutdown()
    output = stop_node(process)
    assert process.returncode == 0, output
    assert f"{folder} (ONNX fp32" in output  # the node says what it runs
    embedding = next(e for e in embeddings if e.num_views == 3)
    assert embedding.weights_id == model.weights_id
    expected = model.encode_views(views)[0].numpy()
    np.testing.assert_allclose(np.asarray(embedding.embedding), expected, rtol=0, atol=TOLERANCE)
    match = next(m for m in matches if m.num_views == 3)
    assert {m.id for m in match.bank_matches} == {"red_mug", "white_couch"} and len(match.label_matches) == 3


def test_an_export_runs_the_models_resize_and_a_random_crop_does_not_stop_it(exported, tmp_path):
    folder = exported[1]
    padded = load_model(published_tiny(tmp_path / "w", seed=3), device="cpu").set_preprocessing("random", "pad")
    out = export_onnx(padded, tmp_path / "pad", reuse=folder)  # before: refused as a wrong export
    engine = load_model(out, backend="onnxruntime", device="cpu")
    assert json.loads((out / "config.json").read_text())["resize"] == "pad" and engine.preprocessor.resize == "pad"
    wide = list(random_views(2, size=64, seed=9)[:, :32])  # 64 x 32 views: padding and stretching differ
    reference = load_model(published_tiny(tmp_path / "w2", seed=3), device="cpu").set_preprocessing("center", "pad")
    torch.testing.assert_close(engine.encode_views(wide), reference.encode_views(wide), rtol=0, atol=TOLERANCE)


def test_float_views_mean_the_same_on_every_path(exported, engine):
    model, _ = exported
    views = random_views(3, size=64, seed=12)
    floats = list(views.astype(np.float32) / 255)
    for backend in (model, engine):
        expected = backend.encode_views(list(views))
        via_tokens = backend.embed_view_tokens(backend.view_tokens(floats), [3])  # before: read as 0..255
        torch.testing.assert_close(via_tokens, expected, rtol=0, atol=TOLERANCE)
    with pytest.raises(ValueError, match="view 0: unsupported image dtype int32"):
        model.view_tokens([views[0].astype(np.int32)])


class _Recorded:
    """An ONNX Runtime session that records the shape of every input it is given."""

    def __init__(self, session, shapes):
        self.session, self.shapes = session, shapes

    def run(self, outputs, feed):
        self.shapes.append({name: value.shape for name, value in feed.items()})
        return self.session.run(outputs, feed)


def test_tensorrt_profiles_name_every_input_of_the_exported_graphs(exported):
    limits = ShapeLimits(views_per_call=96, objects_per_call=8, views_per_object=24, texts_per_call=256)
    graphs = {}
    for part in ("per_view", "cross_view", "text"):
        proto = onnx.load(str(exported[1] / f"{part}.onnx"))
        graphs[part] = {
            i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input
        }
    assert tensorrt_profile(graphs["per_view"], limits) == {
        "trt_profile_min_shapes": "pixels:1x3x224x224",
        "trt_profile_opt_shapes": "pixels:12x3x224x224",
        "trt_profile_max_shapes": "pixels:96x3x224x224",
    }
    assert tensorrt_profile(graphs["cross_view"], limits) == {
        "trt_profile_min_shapes": "tokens:1x1x50x64,view_mask:1x1",
        "trt_profile_opt_shapes": "tokens:1x12x50x64,view_mask:1x12",
        "trt_profile_max_shapes": "tokens:8x24x50x64,view_mask:8x24",
    }
    assert tensorrt_profile(graphs["text"], limits)["trt_profile_max_shapes"] == "text:256x77"
    assert tensorrt_profile({"x": ["batch", 3]}, limits) == {}  # an axis the limits do not name: ORT's own
    providers = [
        ("TensorrtExecutionProvider", {"device_id": 0}),
        ("CUDAExecutionProvider", {}),
        ("CPUExecutionProvider", {}),
    ]
    added = with_profile(providers, graphs["per_view"], limits)
    assert added[0][1]["trt_profile_max_shapes"] == "pixels:96x3x224x224" and added[0][1]["device_id"] == 0
    assert added[1:] == providers[1:]
    own = [("TensorrtExecutionProvider", {"trt_profile_max_shapes": "pixels:4x3x224x224"})]
    assert with_profile(own, graphs["per_view"], limits) == own  # the user's own profile is kept
    with pytest.raises(ValueError, match="ShapeLimits.objects_per_call must be a positive integer, got 0"):
        ShapeLimits(objects_per_call=0)


def test_shape_limits_split_calls_and_refuse_an_object_beyond_them(exported, engine):
    limits = ShapeLimits(views_per_call=4, objects_per_call=2, views_per_object=6, texts_per_call=2)
    limited = OnnxRuntimeCLIP(exported[1], providers=["cpu"], shape_limits=limits)
    assert limited.shape_limits is None  # no TensorRT: the CPU provider takes any size
    limited.shape_limits = limits  # as a TensorRT engine's
    shapes = []
    limited._sessions = {part: _Recorded(session, shapes) for part, session in limited._sessions.items()}
    objects = [random_views(count, seed=40 + count) for count in (1, 6, 3, 2, 5)]
    torch.testing.assert_close(limited.encode_views(objects), engine.encode_views(objects), rtol=0, atol=1e-6)
    texts = ["a red mug", "a chair", "duck", "a lamp", "a toy car"]
    torch.testing.assert_close(limited.encode_text(texts), engine.encode_text(texts), rtol=0, atol=1e-6)
    assert max(s["pixels"][0] for s in shapes if "pixels" in s) == 4
    assert max(s["tokens"][0] for s in shapes if "tokens" in s) == 2
    assert max(s["tokens"][1] for s in shapes if "tokens" in s) == 6
    assert max(s["text"][0] for s in shapes if "text" in s) == 2
    with pytest.raises(ValueError, match="an object of 7 views: this engine takes at most 6 views of one object"):
        limited.encode_views(random_views(7, seed=50))
    assert engine.shape_limits is None


class _FakeOrt:
    """onnxruntime whose sessions refuse TensorRT's explicit profile, as for a graph TensorRT takes in parts."""

    def __init__(self):
        self.calls = []

    def InferenceSession(self, path, options, providers):  # onnxruntime's name
        self.calls.append(providers)
        if any("trt_profile_opt_shapes" in options for _, options in providers):
            raise RuntimeError("[ONNXRuntimeError] : 11 : EP_FAIL : TensorRT EP failed to create engine")
        return "session"


def test_a_graph_tensorrt_refuses_a_profile_for_opens_without_one(exported, caplog):
    on_trt = OnnxRuntimeCLIP(exported[1], providers=["cpu"])
    on_trt.providers = [("TensorrtExecutionProvider", {"device_id": 0}), ("CPUExecutionProvider", {})]
    on_trt.shape_limits = ShapeLimits()
    inputs = {"pixels": ["views_total", 3, 224, 224]}
    ort = _FakeOrt()
    assert on_trt._session(ort, exported[1] / "per_view.onnx", None, inputs) == "session"
    assert ort.calls[0][0][1]["trt_profile_max_shapes"] == "pixels:96x3x224x224"
    assert ort.calls[1] == on_trt.providers
    assert "TensorRT refused its explicit profile" in caplog.text
    on_trt.precision, ort.calls = "int8-dynamic", []  # TensorRT lacks its quantisation ops: no profile tried
    on_trt._session(ort, exported[1] / "per_view.onnx", None, inputs)
    assert ort.calls == [on_trt.providers]
    on_trt.precision, ort.calls = "fp32", []
    on_trt.providers[0][1]["trt_profile_max_shapes"] = "pixels:8x3x224x224"  # the user's own
    on_trt._session(ort, exported[1] / "per_view.onnx", None, inputs)
    assert len(ort.calls) == 1 and "your own TensorRT profile is kept" in caplog.text


def test_the_node_derives_limits_from_its_settings_and_refuses_more_enrolment_images(exported):
    assert ShapeLimits.for_node(max_views=12, max_batch=8, max_enroll_images=24) == ShapeLimits()
    assert ShapeLimits.for_node(12, 64, 24) == ShapeLimits(192, 8, 24)  # per-call sizes capped, calls split
    assert ShapeLimits.for_node(12, 8, 256) == ShapeLimits(192, 1, 256)  # long enrolments: one object a call
    assert tensorrt_profile({"x": [0, 3]}, ShapeLimits()) == {}  # an axis with neither name nor size
    config = PerceptionConfig(
        weights=str(exported[1]), backend="onnxruntime", device="cpu", max_views=6, max_batch=3, view_cache_mb=0
    )
    assert loading._shape_limits(config, PerceptionSettings(max_enroll_images=10)) == ShapeLimits(18, 3, 10)
    perception = open_perception(config, PerceptionSettings(min_views=2, max_enroll_images=10))
    try:
        assert perception.model.shape_limits is None  # the CPU provider: no limits
        perception.model.shape_limits = ShapeLimits.for_node(6, 3, 10)  # as on TensorRT
        with pytest.raises(ValueError, match=r"max_enroll_images \(11\) must be <= 10, the most views of one object"):
            perception.update_settings(max_enroll_images=11)
        with pytest.raises(ValueError, match="the most views of one object this ONNX engine takes"):
            perception.checked_settings(max_enroll_images=11)  # what the node asks before a parameter changes
        assert perception.update_settings(max_enroll_images=8).max_enroll_images == 8
    finally:
        perception.close()


def test_the_command_runs_an_engine_with_backend_onnxruntime(exported, tmp_path, capsys):
    from PIL import Image

    model, folder = exported
    views = random_views(3, seed=60)
    (tmp_path / "views").mkdir()
    for i, view in enumerate(views):
        Image.fromarray(view).save(tmp_path / "views" / f"v{i}.png")
    args = ["encode", str(tmp_path / "views"), "-w", str(folder), "--device", "cpu", "--out", str(tmp_path / "e.npy")]
    assert ddclip(args) != 0
    assert "(CLI: --backend onnxruntime)" in capsys.readouterr().err  # before: a backend the CLI had no option for
    assert ddclip([*args, "--backend", "onnxruntime"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), model.encode_views(list(views)).numpy(), atol=1e-5)
