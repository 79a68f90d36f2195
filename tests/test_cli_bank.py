"""The retrieval commands of the ddclip CLI through its entry point: bank, search, classify."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image

from ddclip_core import save_export
from tests.cli_run import ddclip, ddclip_process
from tests.conftest import make_tiny, random_views


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_bank")
    export = save_export(make_tiny(seed=3), root / "weights")
    objects = root / "objects"
    for index, name in enumerate(("red_mug", "white_couch", "rubber_duck")):
        (objects / name).mkdir(parents=True)
        for i, view in enumerate(random_views(2, seed=10 * index)):
            Image.fromarray(view).save(objects / name / f"{i}.png")
    result = ddclip("bank", "build", str(objects), "--out", str(root / "bank"), "--weights", str(export), "--quiet")
    assert result.returncode == 0, result.stderr
    return root, export, objects


def test_bank_info(setup):
    root, _, _ = setup
    result = ddclip_process("bank", "info", str(root / "bank"))  # one real process: its stderr as users see it
    assert result.returncode == 0 and result.stderr == "", result.stderr  # no faiss loader lines, no warnings
    assert "objects    3 x 32" in result.stdout and "tiny-test-lt2-" in result.stdout
    manifest = json.loads(ddclip("bank", "info", str(root / "bank"), "--json").stdout)
    assert manifest["rows"] == 3


def test_search_by_text_views_similarity_and_mixing(setup, tmp_path):
    root, export, objects = setup
    bank, weights = str(root / "bank"), ["--weights", str(export)]
    result = ddclip("search", bank, "a red mug", "-k", "2", "--json", *weights)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["matches"]) == 2
    views = [str(p) for p in sorted((objects / "rubber_duck").iterdir())]
    sheet = tmp_path / "sheet.png"
    result = ddclip("search", bank, "--views", *views, "-k", "3", "--sheet", str(sheet), *weights)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[2].split()
    assert first[0] == "1" and first[1] == "1.000" and first[-1] == "rubber_duck"
    image = Image.open(sheet)
    assert image.size[0] > 4 * 160 and np.asarray(image).std() > 10  # query + 3 thumbnails, not blank
    result = ddclip("search", bank, "--like", "red_mug", "-k", "5", "--json")
    assert result.returncode == 0, result.stderr
    like = json.loads(result.stdout)["matches"]
    assert {m["id"] for m in like} == {"white_couch", "rubber_duck"}  # itself excluded
    assert like[0]["score"] >= like[1]["score"]
    result = ddclip("search", bank, "--mix", "red_mug", "white_couch", "-k", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["matches"][0]["id"] == "rubber_duck"


def test_search_errors(setup):
    root, export, _ = setup
    result = ddclip("search", str(root / "bank"), "--weights", str(export))
    assert result.returncode == 2 and "give exactly one query" in result.stderr
    other = save_export(make_tiny(seed=8), root / "other")
    result = ddclip("search", str(root / "bank"), "a mug", "--weights", str(other))
    assert result.returncode == 2 and "not comparable" in result.stderr
    result = ddclip("search", str(root / "missing"), "a mug")
    assert result.returncode == 2 and "not a ddclip bank" in result.stderr


def test_classify_with_a_label_file(setup, tmp_path):
    _, export, objects = setup
    labels = tmp_path / "labels.txt"
    labels.write_text("mug\ncouch\nduck\nlamp\n")
    mug, weights = str(objects / "red_mug"), ["--weights", str(export)]
    result = ddclip("classify", mug, "--labels", str(labels), "-k", "3", "--json", *weights)
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert len(entry["labels"]) == 3 and {e["label"] for e in entry["labels"]} <= {"mug", "couch", "duck", "lamp"}
    result = ddclip("classify", mug, "--labels", str(tmp_path / "nope.txt"), *weights)
    assert result.returncode == 2 and "label file not found" in result.stderr


def test_import_objaverse_with_an_approximate_index(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 512)).astype(np.float16)
    with h5py.File(tmp_path / "shape_emb_objaverse.h5", "w") as handle:
        handle.create_dataset("shape_feat", data=vectors)
    (tmp_path / "map.json").write_text(json.dumps({f"uid{i}": i for i in range(2000)}))
    (tmp_path / "lvis.csv").write_text("class_idx,name,uid\n0,chair,uid5\n")
    out = tmp_path / "bank"
    result = ddclip(
        "bank",
        "import-objaverse",
        str(tmp_path / "shape_emb_objaverse.h5"),
        str(tmp_path / "map.json"),
        "--names",
        str(tmp_path / "lvis.csv"),
        "--index",
        "hnsw",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "recall@10 vs exact" in result.stdout and "2000 objects x 512" in result.stdout
    result = ddclip("search", str(out), "--like", "uid5", "-k", "1", "--json")
    assert result.returncode == 0, result.stderr
    info = ddclip("bank", "info", str(out)).stdout
    assert "published:Four_1to6F_bs1600_LT6" in info and "hnsw" in info and "objaverse (2000)" in info
    result = ddclip("bank", "index", str(out), "--index", "flat")
    assert result.returncode == 0, result.stderr
    assert '"kind": "flat"' in ddclip("bank", "info", str(out)).stdout
