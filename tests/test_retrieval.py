"""Label sets and zero-shot labelling, building banks from folders, queries through a model."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddclip_core import load_model
from ddclip_core.bank import BankError, BankMismatchError, EmbeddingBank
from ddclip_core.bank_build import build_bank
from ddclip_core.labels import LabelSet, load_labels, load_templates
from ddclip_core.retrieval import check_compatible, mix, search_text, search_views, similar
from tests.conftest import make_tiny, random_views, write_published_checkpoint


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DDCLIP_LVIS", raising=False)


@pytest.fixture
def objects_folder(tmp_path):
    folder = tmp_path / "objects"
    for index, name in enumerate(("red_mug", "white_couch", "rubber_duck")):
        (folder / name).mkdir(parents=True)
        for i, view in enumerate(random_views(2 + index, seed=10 * index)):
            Image.fromarray(view).save(folder / name / f"{i}.png")
    Image.fromarray(random_views(1, seed=99)[0]).save(folder / "lamp.png")
    (folder / "metadata.csv").write_bytes("id,category,colour\nred_mug,mug,red\n".encode("utf-8-sig"))  # with a BOM
    return folder


def test_label_files_in_every_format(tmp_path):
    (tmp_path / "l.txt").write_text("mug\nchair\n\ncouch\n")
    (tmp_path / "lvis.csv").write_text("class_idx,name,uid\n1,chair,a\n0,baseball_bat,b\n1,chair,c\n2,bow_(weapon),d\n")
    (tmp_path / "l.json").write_text(json.dumps(["a", "b"]))
    with gzip.open(tmp_path / "lvis-annotations.json.gz", "wt") as handle:
        json.dump({"zebra": ["u1"], "apple": ["u2", "u3"]}, handle)
    assert load_labels(tmp_path / "l.txt") == ["mug", "chair", "couch"]
    assert load_labels(tmp_path / "lvis.csv") == ["baseball_bat", "chair", "bow_(weapon)"]
    assert load_labels(tmp_path / "l.json") == ["a", "b"]
    assert load_labels(tmp_path / "lvis-annotations.json.gz") == ["apple", "zebra"]
    assert load_labels(["x", "y"]) == ["x", "y"]
    assert len(load_templates("openai")) == 80 and load_templates("none") == ["{}"]
    # saved with a byte-order mark (Excel's "CSV UTF-8", Notepad): before, '\ufeffmug' or no 'name' column
    (tmp_path / "bom.csv").write_bytes("name\nmug\nchair\n".encode("utf-8-sig"))
    (tmp_path / "bom.txt").write_bytes("mug\nchair\n".encode("utf-8-sig"))
    assert load_labels(tmp_path / "bom.csv") == load_labels(tmp_path / "bom.txt") == ["mug", "chair"]


def test_lvis_label_set_is_found_or_explained(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="ddclip weights download --name lvis"):
        load_labels("lvis")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "lvis.csv").write_text("class_idx,name,uid\n0,apple,a\n1,zebra,b\n")
    assert load_labels("lvis") == ["apple", "zebra"]


def test_bad_label_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="label file not found"):
        load_labels(tmp_path / "nope.txt")
    (tmp_path / "dup.txt").write_text("mug\nmug\n")
    with pytest.raises(ValueError, match="duplicate labels"):
        load_labels(tmp_path / "dup.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no labels"):
        load_labels(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="must each contain"):
        load_templates(["a photo of a thing"])
    for template in ("a photo of {} and {}", "a {} of {1}", "a {} in {place}", "a {} {"):  # one label slot only
        with pytest.raises(ValueError, match="must each contain '{}' once"):
            load_templates([template])
    assert load_templates(["a {{braced}} {}"]) == ["a {{braced}} {}"]
    with pytest.raises(FileNotFoundError, match="neither openai, simple, none nor a file"):
        load_templates("fancy")
    bad_files = [
        ("latin1.txt", "caf\xe9\n".encode("latin-1"), r"latin1.txt: not UTF-8 text \(byte 3"),
        ("broken.json", b'["mug", ', r"broken.json: not valid JSON"),
        ("numbers.json", b"[1, 2]", r"numbers.json: a label JSON must be a list of strings or an object"),
        ("scalar.json", b'"mug"', r"scalar.json: a label JSON must be a list of strings or an object"),
        ("notgzip.json.gz", b"[]", r"notgzip.json.gz: not readable"),
        (
            "truncated.json.gz",
            b"\x1f\x8b\x08\x00CP\x16k\x02\xff\x8bV\xca-MW\xd2QPJ\xceH\xcc,R\x8a\x05\x00MJ",
            r"truncated.json.gz: not a complete gzip file",
        ),  # was EOFError
        ("classes.csv", b"class_idx,name\none,mug\n", r"classes.csv: line 2: class_idx 'one' is not an integer"),
    ]
    for name, data, message in bad_files:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=message):
            load_labels(tmp_path / name)
    (tmp_path / "templates.txt").write_bytes("une photo d'un {} \xe0\n".encode("latin-1"))
    with pytest.raises(ValueError, match="templates.txt: not UTF-8 text"):
        load_templates(str(tmp_path / "templates.txt"))


def test_zero_shot_with_a_tiny_label_list(tmp_path):
    model = make_tiny()
    labels = LabelSet(["red mug", "white couch", "rubber_duck"], templates=["a photo of a {}.", "a 3D model of a {}."])
    class_embeddings = labels.embeddings(model)
    prompts = model.encode_text(["a photo of a rubber duck.", "a 3D model of a rubber duck."])
    expected = prompts.mean(0) / prompts.mean(0).norm()
    np.testing.assert_allclose(class_embeddings[2], expected.numpy(), atol=1e-6)
    top = labels.classify(model, class_embeddings, k=2)
    assert [result[0][0] for result in top] == ["red mug", "white couch", "rubber_duck"]
    assert top[0][0][1] == pytest.approx(1.0, abs=1e-5) and len(top[0]) == 2
    cached = list((tmp_path / "cache" / "labels").glob("*.npy"))
    assert len(cached) == 1
    calls = []
    model.encode_text = lambda *a, **k: calls.append(1) or pytest.fail("label embeddings computed again")
    assert labels.embeddings(model) is class_embeddings and not calls  # kept in memory: computed once
    flipped = -class_embeddings
    np.save(cached[0], flipped)  # a fresh label set (another process) reads the disk cache
    np.testing.assert_array_equal(LabelSet(labels.labels, templates=labels.templates).embeddings(model), flipped)
    del model.encode_text
    cached[0].write_bytes(cached[0].read_bytes()[:100])  # truncated: computed again, not trusted
    np.testing.assert_allclose(LabelSet(labels.labels, templates=labels.templates).embeddings(model), class_embeddings)
    assert labels.cache_key(model.weights_id) != labels.cache_key(make_tiny(seed=5).weights_id)
    with pytest.raises(ValueError, match="k must be >= 1"):
        labels.classify(model, class_embeddings, k=0)


def test_label_embeddings_are_kept_per_precision_and_only_for_the_last_few_weights(tmp_path):
    model = make_tiny(seed=6)
    labels = LabelSet(["red mug", "white couch"], templates=["a photo of a {}."])
    model.set_precision("bf16")
    half = labels.embeddings(model).copy()
    model.set_precision("fp32")
    full = labels.embeddings(model)  # before: the bf16 matrix, from memory or from the disk cache
    expected = model.encode_text(["a photo of a red mug."])[0].numpy()
    np.testing.assert_allclose(full[0], expected, atol=1e-6)
    assert not np.array_equal(half, full)
    assert np.array_equal(LabelSet(labels.labels, templates=labels.templates).embeddings(model), full)  # from disk
    assert len(list((tmp_path / "cache" / "labels").glob("*.npy"))) == 2
    for _ in range(2 * LabelSet.KEPT_IN_MEMORY):  # a fine-tuning loop: new weights at every step
        with torch.no_grad():
            model.clip.token_embedding.weight.mul_(1.01)
        labels.embeddings(model, cache=False)
    assert len(labels._in_memory) == LabelSet.KEPT_IN_MEMORY  # before: one matrix per step, forever


def test_build_bank_from_a_folder_and_query_it(objects_folder, tmp_path):
    model = make_tiny()
    bank = build_bank(model, objects_folder, progress=False)
    assert len(bank) == 4 and bank.weights_id == model.weights_id
    mug = bank.metadata("red_mug")
    assert mug["name"] == "red mug" and mug["category"] == "mug" and mug["colour"] == "red" and mug["views"] == "2"
    views = sorted((objects_folder / "white_couch").iterdir())
    best = search_views(bank, model, views, k=2)[0][0]
    assert best.id == "white_couch" and best.score == pytest.approx(1.0, abs=1e-5)
    assert len(search_text(bank, model, "a red mug", k=3)[0]) == 3
    assert "red_mug" not in [m.id for m in similar(bank, "red_mug", k=3)]
    mixed = mix(bank, "red_mug", "white couch", k=2, model=model)
    assert len(mixed) == 2 and "red_mug" not in {m.id for m in mixed}
    with pytest.raises(BankError, match="texts need a model"):
        mix(bank, "red_mug", "a chair")


def test_build_bank_from_strips_keeps_view_counts(tmp_path):
    folder = tmp_path / "strips"
    folder.mkdir()
    views = random_views(3, seed=7)
    Image.fromarray(np.concatenate(list(views), axis=0)).save(folder / "lamp.png")
    model = make_tiny()
    build_bank(model, folder, num_views=3, progress=False).save(tmp_path / "bank")
    bank = EmbeddingBank.load(tmp_path / "bank")
    assert bank.metadata("lamp")["strip_views"] == "3" and bank.metadata("lamp")["views"] == "3"
    assert search_views(bank, model, views, k=1)[0][0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="objects folder not found"):
        build_bank(model, tmp_path / "nope", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no objects in"):
        build_bank(model, tmp_path / "empty", progress=False)


def test_queries_from_other_weights_are_refused(objects_folder, tmp_path):
    bank = build_bank(make_tiny(seed=1), objects_folder, progress=False)
    other = make_tiny(seed=2)
    with pytest.raises(BankMismatchError, match="not comparable"):
        search_text(bank, other, "a mug")
    with pytest.raises(BankMismatchError):
        search_views(bank, other, random_views(1))


def test_published_embeddings_match_the_published_checkpoint(tmp_path):
    source = make_tiny()
    hparams = {"ddclip_config": source.config.to_dict()}
    path = write_published_checkpoint(source, tmp_path / "Four_1to6F_bs1600_LT6.ckpt", hparams)
    published = load_model(path, device="cpu")
    bank = EmbeddingBank(32, weights_id="published:Four_1to6F_bs1600_LT6")
    bank.add(torch.randn(3, 32))
    check_compatible(bank, published)  # the released embeddings come from this checkpoint
    with pytest.raises(BankMismatchError):
        check_compatible(bank, source)  # same tensors, but not known to be the published file
