"""The ``context`` dataset (look-alike cat and dog told apart by their companions), its positive control, the
identity-graph GRM arm and the ablation's results file."""

import json
import math

import numpy as np
import pytest
import torch

from grmseg.cli import main
from grmseg.models.wsss import SegmentationNet
from grmseg.pipeline.ablation import SEG_ARMS, ablation_table, arm_config, row_metrics, seed_table, summarize
from grmseg.pipeline.common import knowledge_graph
from grmseg.pipeline.config import PipelineConfig, demo_preset, tiny_preset
from grmseg.pipeline.control import LabelPlanesView, build_control_net, with_label_planes
from grmseg.pipeline.datasets import CONTEXT_CLASSES, ContextScenes, SyntheticShapes, build_dataset, labels_from_mask
from grmseg.pipeline.datasets.synthetic import CONTEXT, dataset_class_index
from grmseg.pipeline.metrics import look_alike_scores
from grmseg.pipeline.stages.train_seg import build_segmenter, seg_dir, seg_label
from grmseg.pipeline.training import TrainingView, make_augment

CAT, DOG, SOFA, HORSE, SHEEP, PERSON = (CONTEXT_CLASSES.index(c) for c in ("cat", "dog", "sofa", "horse", "sheep",
                                                                              "person"))


def test_context_is_deterministic_with_voc_names():
    a, b = ContextScenes("train", 10, 40, seed=5), build_dataset("context", "train", num_images=10, size=40, seed=5)
    c = ContextScenes("train", 10, 40, seed=6)
    syn = SyntheticShapes("train", 10, 40, seed=5)
    assert a.name == "context" and a.class_names == list(CONTEXT_CLASSES) and a.ids[0] == "ctx_train_00000"
    for i in range(10):
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
        np.testing.assert_array_equal(a[i]["mask"], b[i]["mask"])
        np.testing.assert_array_equal(a[i]["labels"], labels_from_mask(a[i]["mask"], len(CONTEXT_CLASSES)))
    assert any(not np.array_equal(a[i]["image"], c[i]["image"]) for i in range(10))
    assert any(not np.array_equal(a[i]["image"], syn[i]["image"]) for i in range(10))  # its own scenes
    # VOC's indices, so the shipped embeddings apply: background, person, cat, dog, sofa, horse, sheep
    assert [dataset_class_index(k, "voc", CONTEXT) for k in range(7)] == [0, 15, 8, 12, 18, 13, 17]


def test_cat_and_dog_look_alike_and_never_meet():
    ds = ContextScenes("train", 240, 48, seed=0)
    colours = {k: [] for k in range(1, 7)}
    for i in range(len(ds)):
        s = ds[i]
        assert not (s["labels"][CAT - 1] and s["labels"][DOG - 1])  # living room or farm, never both
        for k, found in colours.items():
            m = s["mask"] == k
            if m.sum() > 20:
                found.append(s["image"][m].astype(np.float64).mean(0))
    mean = {k: np.mean(v, axis=0) for k, v in colours.items()}
    # cat and dog pixels have one colour distribution; every other class is far from it
    assert np.abs(mean[CAT] - mean[DOG]).max() < 8
    for k in (PERSON, SOFA, HORSE, SHEEP):
        assert np.abs(mean[k] - mean[CAT]).max() > 40


def test_cooccurrence_graph_links_each_look_alike_to_its_companions():
    labels = ContextScenes("train", 400, 32, seed=0).image_labels()
    adj = knowledge_graph("cooccurrence", torch.zeros(6, 4), labels)  # as the classifier stage builds it
    a = {n: i for i, n in enumerate(CONTEXT_CLASSES[1:])}
    for x, y in (("cat", "sofa"), ("cat", "person"), ("dog", "horse"), ("dog", "sheep")):
        assert adj[a[x], a[y]] > 0.05, (x, y)
    for x, y in (("cat", "dog"), ("dog", "cat"), ("cat", "horse"), ("cat", "sheep"), ("dog", "sofa")):
        assert adj[a[x], a[y]] == 0, (x, y)


def test_label_planes_survive_augmentation():
    image, labels = torch.rand(3, 5, 7), torch.tensor([1.0, 0.0, 1.0])
    x = with_label_planes(image, labels)
    assert x.shape == (6, 5, 7)
    torch.testing.assert_close(x[:3], image)
    assert (x[3] == 1).all() and (x[4] == 0).all() and (x[5] == 1).all()
    cfg = PipelineConfig.from_dict({**tiny_preset(), "dataset": "context"})
    ds = ContextScenes("train", 4, 32, seed=0)
    aug = make_augment(cfg, "seg", 2)
    plain = TrainingView(ds, aug, 0, "seg", mask_fn=lambda s: s["mask"])
    view = LabelPlanesView(ds, aug, 0, "seg", mask_fn=lambda s: s["mask"])
    for i in range(len(ds)):
        (img, y), (img0, y0) = view[i], plain[i]
        torch.testing.assert_close(img[:3], img0)  # the same augmentation draws
        torch.testing.assert_close(y, y0)
        planes = torch.from_numpy(ds[i]["labels"])[:, None, None].expand(-1, *img.shape[1:])
        torch.testing.assert_close(img[3:], planes)  # padding and crop never touch them


def test_control_nets_pixels_arm_is_context_blind_labels_arm_uses_labels():
    cfg = PipelineConfig.from_dict({**tiny_preset(), "dataset": "context"})
    torch.manual_seed(0)
    blind = build_control_net(cfg, 7, with_labels=False).eval()
    pooled = SegmentationNet(7, "tiny", cfg.width, aspp_channels=8, aspp_rates=(), use_grm=False).eval()
    x = torch.randn(1, 3, 64, 128)
    far = x.clone()
    far[..., 80:] = torch.randn_like(far[..., 80:]) * 3
    with torch.no_grad():
        assert torch.equal(blind(x)[..., :32], blind(far)[..., :32])  # pixels 48+ away never reach it
        assert not torch.equal(pooled(x)[..., :32], pooled(far)[..., :32])  # image pooling does
        informed = build_control_net(cfg, 7, with_labels=True).eval()
        lab = torch.zeros(1, 6)
        lab[0, CAT - 1] = 1
        y_cat = informed(with_label_planes(x, lab))
        lab2 = torch.zeros(1, 6)
        lab2[0, DOG - 1] = 1
        assert not torch.allclose(y_cat, informed(with_label_planes(x, lab2)))
    with pytest.raises(ValueError, match=r"\[B, 9, H, W\]"):
        informed(x)


def test_context_control_command(tmp_path, capsys):
    run = tmp_path / "ctl"
    args = ["context-control", "--run-dir", str(run), "--syn-train-images", "8", "--syn-val-images", "4",
            "--syn-size", "32", "--width", "4", "--seg-epochs", "1", "--seg-batch", "4", "--aspp-channels", "8",
            "--no-progress"]
    assert main(args) == 0
    out = json.loads((run / "control.json").read_text())
    assert set(out["arms"]) == {"pixels", "labels"}
    for arm in out["arms"].values():
        (pair,) = arm["look_alikes"]
        assert pair["pair"] == ["cat", "dog"] and pair["pixels"] > 0 and 0 <= pair["confusion"] <= 1
    assert "cat <-> dog confused" in (run / "control.md").read_text()
    settings = json.loads((run / "pixels" / "settings.json").read_text())
    assert settings["use_grm"] is False and settings["aspp_pooling"] is False
    assert main([*args, "--dataset", "synthetic"]) == 2  # no look-alikes there
    assert "look-alike" in capsys.readouterr().err


def test_look_alike_scores():
    conf = np.array([[50, 0, 0], [0, 30, 10], [0, 20, 40]])  # background, cat, dog; rows = truth
    s = look_alike_scores(conf, ["background", "cat", "dog"], ("cat", "dog"))
    assert s["pixels"] == 100 and s["confusion"] == pytest.approx(0.3)
    assert s["iou"]["cat"] == pytest.approx(30 / 60) and s["iou"]["dog"] == pytest.approx(40 / 70)
    with pytest.raises(ValueError, match="'horse'"):
        look_alike_scores(conf, ["background", "cat", "dog"], ("cat", "horse"))


def test_identity_graph_arm_has_no_knowledge():
    cfg = PipelineConfig.from_dict({**tiny_preset(), "dataset": "context"})
    names = list(CONTEXT_CLASSES)
    labels = ContextScenes("train", 60, 32, seed=0).image_labels()
    arms = {g: arm_config(cfg, 1, True, g) for g in SEG_ARMS}
    assert {g: seg_dir(c) for g, c in arms.items()} == {"on": "seg", "off": "seg_nogrm",
                                                         "identity": "seg_grm_none_noemb"}
    assert seg_label(arms["identity"]) == "segmentation (GRM, graph none, no embeddings)"
    blind = arms["off"].replace(aspp_pooling=False)
    assert seg_dir(blind) == "seg_nogrm_nopool" and seg_label(blind) == "segmentation (no GRM, no ASPP pooling)"
    assert build_segmenter(blind, names, labels, load_weights=False).aspp.pool is None
    assert all(c.seed == 1 and c.run_dir.endswith("gcn-on-s1") for c in arms.values())
    knowing = build_segmenter(arms["on"], names, labels, load_weights=False).grm
    blank = build_segmenter(arms["identity"], names, labels, load_weights=False).grm
    off_diagonal = knowing.adjacency - torch.diag(torch.diagonal(knowing.adjacency))
    assert off_diagonal[CAT, SOFA] > 0 and off_diagonal[DOG, HORSE] > 0  # the co-occurrence graph, background first
    torch.testing.assert_close(blank.adjacency, torch.eye(len(names)))
    assert blank.embeddings is None and knowing.embeddings is not None


def _row(gcn, grm, seed, seg, conf):
    la = [{"pair": ["cat", "dog"], "iou": {"cat": 0.5, "dog": None}, "confusion": conf, "pixels": 10}]
    part = {"split": "val", "images": 4, "look_alikes": la}
    return {"gcn": gcn, "grm": grm, "seed": seed, "cam": {"miou": 0.2, **part}, "pseudo": {"miou": 0.4, **part},
            "seg": {"miou": seg, **part}}


def test_ablation_summary_and_tables():
    rows = [_row(True, "on", 0, 0.5, 0.2), _row(True, "on", 1, 0.7, 0.4), _row(False, "identity", 0, 0.3, 0.1)]
    m = row_metrics(rows[0])
    assert m["seg_miou"] == 0.5 and m["seg_cat_dog_confusion"] == 0.2 and math.isnan(m["seg_dog_iou"])
    s = summarize(rows)
    assert list(s) == ["gcn-on/grm-on", "gcn-off/grm-identity"]
    assert s["gcn-on/grm-on"]["seg_miou"] == pytest.approx({"mean": 0.6, "min": 0.5, "max": 0.7,
                                                             "std": math.sqrt(0.02)})
    assert s["gcn-off/grm-identity"]["seg_cat_dog_confusion"]["std"] == 0.0
    table = ablation_table(s, (("cat", "dog"),), 2)
    assert "| GCN head on | GRM on | 20.0 | 40.0 | 60.0 (50.0-70.0) | 50.0 |" in table
    assert "| GCN head off | GRM, identity graph |" in table and "30.0 (30.0-30.0)" in table
    assert "| GCN head on | GRM on | 50.0 | 70.0 |" in seed_table(rows)


def test_ablation_on_context_writes_its_json(tmp_path, capsys):
    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(json.dumps({**PipelineConfig.from_dict(tiny_preset()).to_dict(), "num_figures": 0,
                                    "syn_train_images": 16, "eval_crf": False}))
    run = tmp_path / "abl"
    assert main(["ablation", "--dataset", "context", "--config", str(cfg_file), "--run-dir", str(run),
                 "--seeds", "0"]) == 0
    assert "| GCN head off | GRM, identity graph |" in capsys.readouterr().out
    out = json.loads((run / "ablation.json").read_text())
    assert out["dataset"] == "context" and out["seeds"] == [0] and out["look_alikes"] == [["cat", "dog"]]
    assert {(r["gcn"], r["grm"]) for r in out["rows"]} == {(g, a) for g in (True, False) for a in SEG_ARMS}
    for r in out["rows"]:
        for stage in ("cam", "pseudo", "seg"):
            (pair,) = r[stage]["look_alikes"]
            assert 0 <= r[stage]["miou"] <= 1 and pair["pair"] == ["cat", "dog"]
        assert r["cam"]["split"] == "train" and r["seg"]["split"] == "val"
    assert set(out["summary"]) == {f"gcn-{g}/grm-{a}" for g in ("on", "off") for a in SEG_ARMS}
    assert out["settings"]["dataset"] == "context" and set(out["seconds"]) == {"0"}
    assert (run / "gcn-on-s0" / "seg_grm_none_noemb" / "model.pt").is_file()
    assert "Segmentation mIoU per seed" in (run / "ablation.md").read_text()
    # without ASPP image pooling: the same classifiers and pseudo masks, new segmentation arms, its own files
    cls_model = run / "gcn-off-s0" / "cls" / "model.pt"
    before = cls_model.stat().st_mtime_ns
    assert main(["ablation", "--dataset", "context", "--config", str(cfg_file), "--run-dir", str(run),
                 "--seeds", "0", "--no-aspp-pooling"]) == 0
    nopool = json.loads((run / "ablation_nopool.json").read_text())
    assert nopool["aspp_pooling"] is False and all(r["aspp_pooling"] is False for r in nopool["rows"])
    assert json.loads((run / "ablation.json").read_text())["aspp_pooling"] is True
    assert (run / "gcn-off-s0" / "seg_nogrm_nopool" / "model.pt").is_file() and cls_model.stat().st_mtime_ns == before
    assert "without image pooling" in (run / "ablation_nopool.md").read_text()


def test_context_preset():
    p = demo_preset("context")
    assert p["dataset"] == "context" and p["cls_epochs"] > demo_preset()["cls_epochs"]
