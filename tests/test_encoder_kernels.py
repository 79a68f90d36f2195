"""The CPU inference path with pre-packed oneDNN weights (``_prepacked``) and precision="auto".

Every check compares the pre-packed path with the plain modules (``DDCLIP_CPU_PREPACK=0``) on the real
ViT-B-32 shapes: what the node and the benchmarks run must give the numbers the network defines.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ddclip_core import load_model, precision, save_export
from ddclip_core._prepacked import PrepackedVisual, packing_available
from tests.conftest import make_tiny, random_views

CPU = torch.device("cpu")
needs_onednn = pytest.mark.skipif(not packing_available(CPU, "fp32"), reason="PyTorch built without oneDNN")


def objects(counts, seed=0):
    return [random_views(count, seed=seed + i) for i, count in enumerate(counts)]


def plain(model, monkeypatch, fn):
    monkeypatch.setenv("DDCLIP_CPU_PREPACK", "0")
    try:
        return fn()
    finally:
        monkeypatch.delenv("DDCLIP_CPU_PREPACK")


@needs_onednn
def test_prepacked_fp32_equals_the_modules_on_mixed_view_counts(vit_b32, monkeypatch):
    batch = objects([1, 5, 12, 3])
    vit_b32.set_precision("fp32")
    assert vit_b32._inference_weights()[0] is not None, "the pre-packed path must be the one under test"
    fast = vit_b32.encode_views(batch)
    reference = plain(vit_b32, monkeypatch, lambda: vit_b32.encode_views(batch))
    assert (fast - reference).abs().max().item() <= 1e-5
    # the two halves (what the view cache calls) agree with the whole, and with the plain halves
    views = [view for obj in batch for view in obj]
    tokens = vit_b32.view_tokens(views)
    plain_tokens = plain(vit_b32, monkeypatch, lambda: vit_b32.view_tokens(views))
    assert (tokens - plain_tokens).abs().max().item() <= 1e-4 * plain_tokens.abs().max().item()
    halves = vit_b32.embed_view_tokens(tokens, [1, 5, 12, 3])
    assert (halves - fast).abs().max().item() <= 1e-6


@needs_onednn
@pytest.mark.parametrize("use_mkl", [False, True])
def test_either_fp32_gemm_kernel_gives_the_modules_numbers(vit_b32, monkeypatch, use_mkl):
    """Each fp32 layer runs oneDNN's packed GEMM or MKL's, whichever it timed faster at that row count:
    both must give the network's numbers, with every op (plain, GELU, residual add) on either."""
    vit_b32.set_precision("fp32")
    batch = objects([1, 5])
    reference = plain(vit_b32, monkeypatch, lambda: vit_b32.encode_views(batch))
    packed = vit_b32._inference_weights()[0]
    layers = [packed.patch_embed, *(getattr(b, n) for b in packed.blocks for n in ("qkv", "out", "fc", "proj"))]
    decided = {id(layer.mkl): layer.mkl for layer in layers}  # shared per (dtype, shape)
    saved = {key: dict(choices) for key, choices in decided.items()}
    try:
        for choices in decided.values():
            choices.clear()
            for rows in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
                choices.update({(rows, op): use_mkl for op in ("none", "gelu", "add")})
        fast = vit_b32.encode_views(batch)
        measured_anew = [c for c in decided.values() if set(c.values()) != {use_mkl}]
    finally:
        for key, choices in decided.items():
            choices.clear()
            choices.update(saved[key])
    assert (fast - reference).abs().max().item() <= 1e-5
    assert not measured_anew  # every layer ran the kernel the test forced


@needs_onednn
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_inference_runs_the_last_block_for_each_views_cls_alone(vit_b32, monkeypatch, precision):
    """Only each view's CLS leaves the tower, so inference runs the last block's output for it alone
    (its attention still reads every token): the numbers of the whole block, 6 % fewer FLOPs."""
    if precision == "bf16" and not packing_available(CPU, "bf16"):
        pytest.skip("no bf16 kernels on this CPU")
    counts = [1, 5, 12, 3]
    pixels = torch.randn(len(counts), 12, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    mask = torch.arange(12)[None, :] < torch.tensor(counts)[:, None]
    vit_b32.set_precision("fp32")
    every_token = vit_b32.encode_views(pixels, view_mask=mask).detach()  # autograd: the modules, whole blocks
    vit_b32.set_precision(precision)
    with torch.inference_mode():
        fast = vit_b32.encode_views(pixels, view_mask=mask)
        modules = plain(vit_b32, monkeypatch, lambda: vit_b32.encode_views(pixels, view_mask=mask))
    tolerance = 1e-5 if precision == "fp32" else 1e-2
    assert (fast - every_token).abs().max().item() <= tolerance
    assert (modules - every_token).abs().max().item() <= tolerance
    vit_b32.set_precision("fp32")
    with FlopCounterMode(display=False) as training:
        vit_b32(pixels[:1, :4])
    with FlopCounterMode(display=False) as inference, torch.inference_mode():
        vit_b32(pixels[:1, :4])
    assert 0.92 < inference.get_total_flops() / training.get_total_flops() < 0.95


@needs_onednn
def test_chunks_of_objects_give_what_one_pass_gives(monkeypatch):
    from ddclip_core import _multiview

    model = make_tiny()
    batch = objects([1, 5, 7, 2, 3], seed=40)
    whole = model.encode_views(batch)
    views = [view for obj in batch for view in obj]
    tokens = model.view_tokens(views)
    monkeypatch.setattr(_multiview, "CPU_CHUNK_VIEWS", 4)  # chunks of 1 object, 2 objects, and 7 views alone
    assert _multiview.object_chunks([1, 5, 7, 2, 3], 4) == [
        (0, 1, 0, 1),
        (1, 2, 1, 6),
        (2, 3, 6, 13),
        (3, 4, 13, 15),
        (4, 5, 15, 18),
    ]
    assert (model.encode_views(batch) - whole).abs().max().item() <= 1e-6
    assert (model.view_tokens(views) - tokens).abs().max().item() <= 1e-5
    assert (model.embed_view_tokens(tokens, [1, 5, 7, 2, 3]) - whole).abs().max().item() <= 1e-5


@needs_onednn
def test_prepacked_is_permutation_invariant_and_padding_free(vit_b32):
    vit_b32.set_precision("fp32")
    views = random_views(6, seed=9)
    together = vit_b32.encode_views([views, views[:2]])
    assert (vit_b32.encode_views(views[::-1]) - together[0]).abs().max().item() <= 1e-5
    assert (vit_b32.encode_views(views[:2]) - together[1]).abs().max().item() <= 1e-5


@pytest.mark.skipif(not packing_available(CPU, "bf16"), reason="no oneDNN bf16 kernels on this CPU")
def test_prepacked_bf16_stays_at_parity_with_fp32(vit_b32, monkeypatch):
    batch = objects([1, 12, 4], seed=20)
    reference = vit_b32.set_precision("fp32").encode_views(batch)
    try:
        half = vit_b32.set_precision("bf16").encode_views(batch)
        packed = vit_b32._inference_weights()[0]
        assert packed.dtype == torch.bfloat16
        # whichever way the measured row splits went, the other way keeps parity too
        linears = [linear for block in packed.blocks for linear in (block.qkv, block.out, block.fc, block.proj)]
        assert all(linear.parts for linear in linears), "every layer has its row counts measured"
        shapes = {id(linear.parts): linear.parts for linear in linears}
        assert len(shapes) == 4  # measured once per weight shape, shared by the 12 blocks
        for parts in shapes.values():
            parts.update({rows: 2 if n == 1 else 1 for rows, n in parts.items()})
        flipped = vit_b32.encode_views(batch)
    finally:
        vit_b32.set_precision("fp32")
    assert (half * reference).sum(-1).min().item() >= 0.999
    assert (flipped * reference).sum(-1).min().item() >= 0.999


@pytest.mark.skipif(not packing_available(CPU, "bf16"), reason="no oneDNN bf16 kernels on this CPU")
def test_bf16_linears_measure_a_row_split_once_per_row_count(monkeypatch):
    from ddclip_core import _prepacked
    from ddclip_core._prepacked import _Linear

    monkeypatch.setattr(_prepacked, "_CHOICES", {})  # not the decisions earlier tests' bf16 passes made
    torch.manual_seed(0)
    weight, bias = torch.randn(768, 3072) / 55, torch.randn(768)  # c_proj's shape
    assert _Linear.pack(weight, bias, torch.float32).parts is None  # fp32: one call, never measured
    linear = _Linear.pack(weight, bias, torch.bfloat16)
    x = torch.randn(600, 3072).bfloat16()
    reference = x.float() @ weight.t() + bias
    linear(x[:100])
    assert linear.parts == {}  # too few rows to be worth measuring
    linear(x)
    assert list(linear.parts) == [600] and linear.parts[600] in (1, 2, 4)
    for parts in (1, 2, 4):
        linear.parts[600] = parts
        out = linear(x).float()
        assert out.shape == reference.shape
        assert torch.nn.functional.cosine_similarity(out, reference).min().item() >= 0.9999


@needs_onednn
def test_row_counts_past_the_remembered_ones_run_unmeasured(monkeypatch):
    """Before: once a layer shape's table was full, every call at a new row count was measured again
    (nine timed runs of the layer), where the table's comment promised one plain call."""
    from ddclip_core import _prepacked

    monkeypatch.setattr(_prepacked, "_CHOICES", {})
    monkeypatch.setattr(_prepacked, "_SPLIT_MAX_ENTRIES", 1)
    measured = []
    best_times = _prepacked._best_times
    monkeypatch.setattr(_prepacked, "_best_times", lambda *runs, **kw: measured.append(1) or best_times(*runs, **kw))
    torch.manual_seed(0)
    weight, bias = torch.randn(64, 32), torch.randn(64)
    linear = _prepacked._Linear.pack(weight, bias, torch.float32)
    for rows in (5, 300, 300, 5000):  # row buckets 8, 512, 8192: only the first is measured
        x = torch.randn(rows, 32)
        torch.testing.assert_close(linear(x), torch.nn.functional.linear(x, weight, bias), atol=1e-4, rtol=1e-5)
    assert measured == [1] and len(linear.mkl) == 1


@needs_onednn
def test_packed_weights_follow_in_place_updates_and_new_weights(monkeypatch):
    model = make_tiny()
    views = random_views(4, seed=3)
    before = model.encode_views(views)
    with torch.no_grad():  # an optimiser step changes weights in place
        model.clip.visual.transformer.resblocks[3].attn.in_proj_weight.mul_(1.5)
    after = model.encode_views(views)
    assert (after - before).abs().max().item() > 1e-3
    assert (after - plain(model, monkeypatch, lambda: model.encode_views(views))).abs().max().item() <= 1e-5
    model.load_state_dict(make_tiny(seed=4).state_dict())  # new tensors
    expected = plain(model, monkeypatch, lambda: model.encode_views(views))
    assert (model.encode_views(views) - expected).abs().max().item() <= 1e-5


@needs_onednn
def test_prepacked_text_tower_equals_the_modules(vit_b32, monkeypatch):
    texts = ["a red mug", "something to sit on", "a white couch with two cushions and a blanket"]
    fast = vit_b32.set_precision("fp32").encode_text(texts)
    assert vit_b32._prepacked_text.get(vit_b32.clip, CPU, "fp32") is not None
    reference = plain(vit_b32, monkeypatch, lambda: vit_b32.encode_text(texts))
    assert (fast - reference).abs().max().item() <= 1e-5
    if packing_available(CPU, "bf16"):
        try:
            half = vit_b32.set_precision("bf16").encode_text(texts)
        finally:
            vit_b32.set_precision("fp32")
        assert (half * reference).sum(-1).min().item() >= 0.999


def test_architectures_the_packed_path_cannot_reproduce_use_the_modules():
    model = make_tiny()
    assert PrepackedVisual.supports(model.clip.visual)
    block = model.clip.visual.transformer.resblocks[0]
    block.ls_1 = torch.nn.Linear(1, 1)  # stands in for a LayerScale: not reproduced, so not packed
    assert not PrepackedVisual.supports(model.clip.visual)
    assert model._inference_weights() == (None, model.clip.visual)


def test_gradients_still_flow_through_forward():
    model = make_tiny()
    model.freeze_for_finetuning()
    pixels = torch.randn(2, 3, 3, 224, 224)
    model(pixels).sum().backward()
    grads = [p.grad for _, p in model.trainable_parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_auto_precision_measures_and_explains_its_choice(tmp_path):
    weights = save_export(make_tiny(), tmp_path / "tiny")
    model = load_model(weights, device="cpu", precision="auto")
    assert model.precision in ("fp32", "bf16")
    if precision.candidates(CPU):
        assert model.precision_reason.startswith(f"auto: {model.precision} on this CPU")
        assert "cosine" in model.precision_reason
    else:  # AVX2-only CPUs (EPYC Milan): nothing to measure
        assert model.precision_reason == "auto: fp32 (no 16-bit kernels for this CPU)"
    assert load_model(weights, device="cpu", precision="fp32").precision_reason == "requested"
    with pytest.raises(ValueError, match="precision must be one of"):
        load_model(weights, device="cpu", precision="int4")


def test_auto_keeps_fp32_without_16_bit_kernels_and_restores_the_precision(monkeypatch):
    model = make_tiny()
    monkeypatch.setattr(precision, "candidates", lambda device: [])
    choice = precision.choose_precision(model)
    assert choice.precision == "fp32" and "no 16-bit kernels" in choice.reason
    monkeypatch.undo()
    model.set_precision("fp32")
    precision.choose_precision(model)
    assert model.precision == "fp32"  # probing leaves the model as it was


def test_a_failing_16_bit_candidate_leaves_fp32_and_the_models_precision_and_reason_as_they_were(monkeypatch):
    model = make_tiny().set_precision("fp32")
    model.precision_reason = "auto: fp32 on this CPU (measured before)"
    measure = precision._measure

    def failing(model, name, objects, repeats):
        if name == "bf16":
            raise RuntimeError("no bf16 kernel for this op")
        return measure(model, name, objects, repeats)

    monkeypatch.setattr(precision, "candidates", lambda device: ["bf16"])
    monkeypatch.setattr(precision, "_measure", failing)
    choice = precision.choose_precision(model, repeats=1)  # before: the error ended load_model
    assert choice.precision == "fp32" and "bf16 failed (RuntimeError: no bf16 kernel for this op)" in choice.reason
    assert (model.precision, model.precision_reason) == ("fp32", "auto: fp32 on this CPU (measured before)")


def test_auto_probes_a_batch_where_the_device_asks_for_one(monkeypatch):
    """On CUDA one object's pass is mostly kernel launches, the same in every precision, so auto times a
    batch there (``PROBE_OBJECTS``); the batch is what each timed pass encodes (the CPU stands in here)."""
    model = make_tiny()
    passes = []
    encode_views = model.encode_views
    monkeypatch.setattr(model, "encode_views", lambda objects: passes.append(len(objects)) or encode_views(objects))
    monkeypatch.setattr(precision, "candidates", lambda device: ["bf16"])
    monkeypatch.setattr(precision, "PROBE_OBJECTS", {"cpu": 3})
    choice = precision.choose_precision(model, repeats=2)
    assert passes == [3] * 6 and "bf16" in choice.reason  # warm-up + 2 timed, in fp32 and in bf16
    monkeypatch.setattr(precision, "PROBE_OBJECTS", {"cuda": 8})
    passes.clear()
    precision.choose_precision(model, repeats=1)
    assert passes == [1] * 4  # one object on a CPU


def test_matmul_attention_equals_pytorchs_fused_kernel():
    """The 16-bit attention of CPUs without AMX: with a causal mask (text), and with fewer queries than
    keys (the last block's CLS queries)."""
    from ddclip_core._prepacked import _matmul_attention

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 20, 16, generator=generator) for _ in range(3))
    causal = torch.ones(20, 20, dtype=torch.bool).tril()
    for mask in (None, causal):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(_matmul_attention(q, k, v, mask), expected, rtol=1e-5, atol=1e-5)
    every_fifth = q[:, :, ::5]
    expected = torch.nn.functional.scaled_dot_product_attention(every_fifth, k, v)
    torch.testing.assert_close(_matmul_attention(every_fifth, k, v, None), expected, rtol=1e-5, atol=1e-5)
