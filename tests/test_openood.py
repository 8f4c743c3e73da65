"""OpenOOD v1.5: the registry entries on fake trees in OpenOOD's layout, near/far rows, the CSV export."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import eval_ood_detection
from tests.conftest import write_images
from utils.data import classnames
from utils.data import openood as oo
from utils.data.benchmark import mean_groups
from utils.data.registry import DATASETS
from utils.data.splits import load_dataset
from utils.errors import UserError
from utils.evaluation.metrics import ood_metrics
from utils.evaluation.openood_export import COLUMNS, openood_csv, openood_metrics, openood_rows
from utils.evaluation.pipeline import Evaluation
from utils.evaluation.report import table_rows

TINY = ["--model", "tiny", "--pretrained", "none", "--workers", "0", "--batch-size", "128"]


def _write_list(home, bench, name, entries):
    path = home / oo.LISTS / bench.lists / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{rel} {label}\n" for rel, label in entries))


def _images(base, rel_paths, seed):
    for k, rel in enumerate(rel_paths):
        written = write_images((base / rel).parent, 1, seed=seed + k, size=12)[0]
        written.rename(base / rel)


def fake_cifar10(root, classic=True, per_set=3):
    """OpenOOD's data folder for CIFAR-10 v1.5: lists in benchmark_imglist/cifar10/, images in images_classic/ (or
    directly in openood/, pytorch-ood's download layout, when not `classic`). Lists are written out of file order."""
    home = root / oo.HOME
    base = home / "images_classic" if classic else home
    bench = oo.BENCHMARKS["openood_cifar10"]
    lists = {}
    for split, count in (("train", 2), ("val", 1), ("test", 2)):
        entries = [(f"cifar10/{split}/{c}/{k}.png", label) for k in range(count)
                   for label, c in enumerate(classnames.CIFAR10)][::-1]  # fmt: skip
        lists[bench.list_name(None, split)] = entries
    for dataset in (*bench.near, *bench.far):
        lists[bench.list_name(dataset, "test")] = [(f"{dataset}/test/{j:02d}.png", -1) for j in (2, 0, 1)[:per_set]]
    lists[bench.list_name("tin", "val")] = [("tin/val/a.png", -1), ("tin/val/b.png", -1)]
    for seed, (name, entries) in enumerate(lists.items()):
        _write_list(home, bench, name, entries)
        _images(base, [rel for rel, _ in entries], seed=100 * seed)
    return lists, base


def test_benchmarks_are_pytorch_oods():
    """Our table of lists, near/far sets and val OOD set is pytorch-ood 0.4's, benchmark by benchmark."""
    from pytorch_ood.benchmark.img import openood as pood

    for name, bench in oo.BENCHMARKS.items():
        cls = getattr(pood, bench.pood)
        assert cls._subdir == bench.lists, name
        assert [cls._train_imglist, cls._val_id_imglist, cls._test_id_imglist] == [
            bench.list_name(None, s) for s in ("train", "val", "test")
        ]
        files = [file for _, file in cls._ood_imglists]
        assert files == [bench.list_name(d, "test") for d in (*bench.near, *bench.far)], name
        display = dict(cls._ood_imglists)
        assert [display[d] for d in cls._near_ood] == [bench.list_name(d, "test") for d in bench.near]
        assert [display[d] for d in cls._far_ood] == [bench.list_name(d, "test") for d in bench.far]
        assert cls._val_ood_imglist == bench.list_name(bench.val_ood, "val")


def test_registry_entries_and_groups():
    spec = DATASETS["openood_imagenet"]
    assert spec.ood_groups == {
        "nearood": ("openood_imagenet:ssb_hard", "openood_imagenet:ninco"),
        "farood": ("openood_imagenet:inaturalist", "openood_imagenet:textures", "openood_imagenet:openimage_o"),
    }
    assert spec.ood == (*spec.ood_groups["nearood"], *spec.ood_groups["farood"])
    assert spec.splits == ("train", "val", "test") and spec.knn_k == 1000
    assert DATASETS["openood_imagenet:openimage_o"].splits == ("val", "test")
    assert DATASETS["openood_cifar100:tin"].splits == ("val", "test")
    assert DATASETS["openood_cifar100:mnist"].splits == ("test",)
    assert [oo.short_name(n) for n in spec.ood] == ["ssb_hard", "ninco", "inaturalist", "textures", "openimage_o"]


@pytest.mark.parametrize("classic", [True, False])
def test_cifar10_splits_are_the_lists_exactly(tmp_path, classic):
    lists, base = fake_cifar10(tmp_path, classic=classic)
    for split in ("train", "val", "test"):
        loaded = load_dataset("openood_cifar10", split, tmp_path, download=False)
        expected = lists[f"{split}_cifar10.txt"]
        assert [(p, label) for p, label in loaded.dataset.samples] == [(base / r, label) for r, label in expected]
        assert loaded.classnames == classnames.CIFAR10
    for dataset, split in [("cifar100", "test"), ("places365", "test"), ("tin", "val"), ("tin", "test")]:
        loaded = load_dataset(f"openood_cifar10:{dataset}", split, tmp_path, download=False)
        expected = lists[f"{split}_{dataset}.txt"]
        assert [str(p) for p, _ in loaded.dataset.samples] == [str(base / r) for r, _ in expected]
        assert {label for _, label in loaded.dataset.samples} == {-1}
    image, label = load_dataset("openood_cifar10", "test", tmp_path, download=False).dataset[0]
    assert image.mode == "RGB" and label == 9  # the list's first line: truck


def test_imagenet_layouts_and_classes(tmp_path):
    """ImageNet's sets resolve against images_largescale/, its textures against images_classic/; ImageNet-1k's own
    images may come from the registry's imagenet/ (wnid folders); class names follow the train list's wnids."""
    home, bench = tmp_path / oo.HOME, oo.BENCHMARKS["openood_imagenet200"]
    wnids = ["n01443537", "n01440764", "n01484850"]  # label order as the list says, not sorted
    train = [(f"imagenet_1k/train/{w}/{w}_{k}.JPEG", label) for label, w in enumerate(wnids) for k in range(2)]
    test = [(f"imagenet_1k/val/ILSVRC2012_val_0000000{k}.JPEG", k % 3) for k in (5, 1, 3)]
    _write_list(home, bench, "train_imagenet200.txt", train)
    _write_list(home, bench, "test_imagenet200.txt", test)
    for label in range(len(wnids)):  # the registry's layout: train/<wnid>/, val/<wnid>/
        _images(tmp_path / "imagenet" / "train", [r.split("/", 2)[2] for r, lab in train if lab == label], seed=label)
    for rel, label in test:
        _images(tmp_path / "imagenet" / "val" / wnids[label], [rel.rsplit("/", 1)[1]], seed=label)
    (home / "images_largescale").mkdir(parents=True)
    ssb = [("ssb_hard/x/1.jpg", -1), ("ssb_hard/y/0.jpg", -1)]
    textures = [("texture/images/banded/b.jpg", -1)]
    _write_list(home, bench, "test_ssb_hard.txt", ssb)
    _write_list(home, bench, "test_textures.txt", textures)
    _images(home / "images_largescale", [r for r, _ in ssb], seed=40)
    _images(home / "images_classic", [r for r, _ in textures], seed=50)

    loaded = load_dataset("openood_imagenet200", "test", tmp_path, download=False)
    table = classnames.imagenet1k()
    assert loaded.classnames == tuple(table[w] for w in wnids)
    assert [(p.parent.name, p.name, label) for p, label in loaded.dataset.samples] == [
        (wnids[label], rel.rsplit("/", 1)[1], label) for rel, label in test
    ]
    assert len(load_dataset("openood_imagenet200", "train", tmp_path, download=False).dataset) == 6
    near = load_dataset("openood_imagenet200:ssb_hard", "test", tmp_path, download=False)
    assert [p for p, _ in near.dataset.samples] == [home / "images_largescale" / r for r, _ in ssb]
    far = load_dataset("openood_imagenet200:textures", "test", tmp_path, download=False)
    assert [p for p, _ in far.dataset.samples] == [home / "images_classic" / r for r, _ in textures]


def test_missing_pieces_are_one_clear_error(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError, match="benchmark_imglist/ folder"):
        load_dataset("openood_cifar10", "test", tmp_path, download=False)
    fake_cifar10(tmp_path)
    (tmp_path / oo.HOME / "images_classic" / "cifar10" / "test" / "cat" / "1.png").unlink()
    with pytest.raises(UserError, match=r"1 of the 20 images OpenOOD lists for openood_cifar10 \(test\) are missing"):
        load_dataset("openood_cifar10", "test", tmp_path, download=False)
    import shutil

    shutil.rmtree(tmp_path / oo.HOME / "images_classic" / "mnist")
    with pytest.raises(UserError, match=r"images_classic/mnist is missing .*'mnist' archive"):
        load_dataset("openood_cifar10:mnist", "test", tmp_path, download=False)
    (tmp_path / oo.HOME / oo.LISTS / "cifar10" / "test_svhn.txt").unlink()
    with pytest.raises(UserError, match=r"test_svhn\.txt is missing"):
        load_dataset("openood_cifar10:svhn", "test", tmp_path, download=False)


def test_download_goes_through_pytorch_ood_and_lands_whole(tmp_path, monkeypatch):
    from pytorch_ood.benchmark.img import openood as pood

    fake_cifar10(tmp_path)
    mnist = tmp_path / oo.HOME / "images_classic" / "mnist"
    saved = tmp_path / "saved_mnist"
    mnist.rename(saved)
    calls = []

    def broken(name, root):
        calls.append(name)
        import shutil

        shutil.copytree(saved, f"{root}/{name}")  # extracted, then the connection drops
        raise OSError("connection reset")

    monkeypatch.setattr(pood, "_download_openood_dataset", broken)
    with pytest.raises(UserError, match="connection reset"):
        load_dataset("openood_cifar10:mnist", "test", tmp_path, download=True)
    assert not mnist.exists() and not [p for p in mnist.parent.iterdir() if p.name.startswith(".mnist")]

    def works(name, root):
        calls.append(name)
        import shutil

        shutil.copytree(saved, f"{root}/{name}")

    monkeypatch.setattr(pood, "_download_openood_dataset", works)
    loaded = load_dataset("openood_cifar10:mnist", "test", tmp_path, download=True)
    assert len(loaded.dataset) == 3 and calls == ["mnist", "mnist"] and mnist.is_dir()


def _evaluation(rng, sets, groups):
    evaluation = Evaluation("openood_cifar10", groups=groups, accuracy={"zero_shot_top1": 0.9})
    evaluation.scores["mcm"] = {s: (rng.normal(1, 1, 40), rng.normal(0, 1, 30 + k)) for k, s in enumerate(sets)}
    return evaluation


def test_group_rows_are_means_of_the_sets():
    from utils.evaluation.pipeline import measure

    groups = DATASETS["openood_cifar10"].ood_groups
    sets = [*groups["nearood"], *groups["farood"]]
    evaluation = measure(_evaluation(np.random.default_rng(0), sets[::-1], groups))
    rows = table_rows(evaluation)
    assert [r["ood"] for r in rows] == [*groups["nearood"], "nearood", *groups["farood"], "farood", "average"]
    per_set = evaluation.metrics["mcm"]
    near = next(r for r in rows if r["ood"] == "nearood")
    assert near["AUROC"] == round(100 * np.mean([per_set[s]["AUROC"] for s in groups["nearood"]]), 2)
    average = rows[-1]
    assert average["FPR95"] == round(100 * np.mean([per_set[s]["FPR95"] for s in sets]), 2)

    partial = measure(_evaluation(np.random.default_rng(0), [*sets[:1], *sets[2:]], groups))
    assert [r["ood"] for r in table_rows(partial)] == [sets[0], *groups["farood"], "farood", "average"]
    assert mean_groups(list(partial.scores["mcm"]), groups)[1] == [
        "no nearood mean row: openood_cifar10:tin not evaluated on its test split"
    ]


def _openood_reference(id_scores, ood_scores):
    """OpenOOD's compute_all_metrics (openood/evaluators/metrics.py) restated: OOD labelled -1 and positive."""
    from sklearn import metrics

    conf = np.concatenate([id_scores, ood_scores])
    ood = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    fpr_list, tpr_list, _ = metrics.roc_curve(ood, -conf)
    fpr = fpr_list[np.argmax(tpr_list >= 0.95)]
    precision_in, recall_in, _ = metrics.precision_recall_curve(1 - ood, conf)
    precision_out, recall_out, _ = metrics.precision_recall_curve(ood, -conf)
    return {"FPR@95": fpr, "AUROC": metrics.auc(fpr_list, tpr_list), "AUPR_IN": metrics.auc(recall_in, precision_in),
            "AUPR_OUT": metrics.auc(recall_out, precision_out)}  # fmt: skip


@pytest.mark.parametrize("seed", range(4))
def test_openood_metrics_are_openoods(seed):
    rng = np.random.default_rng(seed)
    id_scores, ood_scores = rng.normal(1, 1, 200 + seed), rng.normal(0, 1.5, 150)
    if seed % 2:  # ties within and across the sets
        id_scores, ood_scores = np.round(id_scores, 1), np.round(ood_scores, 1)
    ours, theirs = openood_metrics(id_scores, ood_scores), _openood_reference(id_scores, ood_scores)
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_openood_fpr_on_small_tied_sets_is_openoods():
    """roc_curve's dropped intermediate points change OpenOOD's FPR@95 on ties; the export follows it."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        id_scores, ood_scores = rng.integers(0, 4, rng.integers(2, 12)), rng.integers(0, 4, rng.integers(2, 12))
        assert openood_metrics(id_scores, ood_scores)["FPR@95"] == pytest.approx(
            _openood_reference(id_scores, ood_scores)["FPR@95"], abs=1e-12
        )


def test_openood_fpr_skips_the_first_point_at_95_percent_recall_as_openood_does():
    """A hand-built tie where roc_curve's drop_intermediate removes the first ROC point reaching 95% of the OOD
    images: OpenOOD's FPR@95 is 0.8 there, the exact first-point one (our FPR95_OOD, and roc_curve with every point)
    0.6."""
    from sklearn.metrics import roc_curve

    id_scores = np.array([1, 0, 0, 4, 2], dtype=np.float64)
    ood_scores = np.array([-3] * 3 + [-2] * 4 + [-1] * 8 + [0] * 4 + [1, 2], dtype=np.float64)
    assert openood_metrics(id_scores, ood_scores)["FPR@95"] == pytest.approx(0.8)
    assert ood_metrics(id_scores, ood_scores)["FPR95_OOD"] == pytest.approx(0.6)
    assert ood_metrics(id_scores, ood_scores, ["FPR95_OPENOOD"])["FPR95_OPENOOD"] == pytest.approx(0.8)
    is_ood = np.r_[np.zeros(5), np.ones(21)]
    fpr, tpr, _ = roc_curve(is_ood, -np.r_[id_scores, ood_scores], drop_intermediate=False)
    assert fpr[np.argmax(tpr >= 0.95)] == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("line", "message"),
    [("cifar10/test/cat/0.png cat", "is not an OpenOOD image list"),
     ("cifar10/test/cat/0.png 57", r"has labels \[57\] outside 0..9")],
)  # fmt: skip
def test_damaged_lists_are_one_clear_error(tmp_path, line, message):
    fake_cifar10(tmp_path)
    path = tmp_path / oo.HOME / oo.LISTS / "cifar10" / "test_cifar10.txt"
    path.write_text(path.read_text() + line + "\n")
    oo.read_list.cache_clear()
    with pytest.raises(UserError, match=message):
        load_dataset("openood_cifar10", "test", tmp_path, download=False)


def test_openood_csv_layout():
    groups = DATASETS["openood_cifar10"].ood_groups
    sets = [*groups["nearood"], *groups["farood"]]
    evaluation = _evaluation(np.random.default_rng(1), sets, groups)
    rows = list(csv.reader(openood_csv(evaluation, "mcm").splitlines()))
    assert rows[0] == ["", *COLUMNS]
    assert [r[0] for r in rows[1:]] == ["cifar100", "tin", "nearood", "mnist", "svhn", "texture", "places365", "farood"]
    table = dict(openood_rows(evaluation, "mcm"))
    reference = {s: _openood_reference(*evaluation.scores["mcm"][s]) for s in sets}
    assert table["nearood"][0] == pytest.approx(100 * np.mean([reference[s]["FPR@95"] for s in groups["nearood"]]))
    assert table["farood"][3] == pytest.approx(100 * np.mean([reference[s]["AUPR_OUT"] for s in groups["farood"]]))
    assert {values[4] for values in table.values()} == {90.0}  # ACC: the ID top-1, on every row


def test_eval_on_openood_cifar10_end_to_end(tmp_path):
    """The preset's settings on the fake tree: near/far rows in results, OpenOOD's CSV beside them."""
    fake_cifar10(tmp_path / "data")
    argv = [*TINY, "--preset", "openood-cifar10", "--data-root", str(tmp_path / "data"), "--no-download",
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out"), "--no-plots"]  # fmt: skip
    summary = eval_ood_detection.main(argv)
    assert summary["samples"]["ID"] == 20 and summary["samples"]["openood_cifar10:tin"] == 3
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert [r["ood"] for r in rows][2] == "nearood" and [r["ood"] for r in rows][7] == "farood"
    exported = list(csv.reader((tmp_path / "out" / "openood" / "mcm.csv").open()))
    assert [r[0] for r in exported[1:]] == ["cifar100", "tin", "nearood", "mnist", "svhn", "texture", "places365",
                                            "farood"]  # fmt: skip
    by_set = {r["ood"]: r for r in rows}
    for line in exported[1:]:  # the export's FPR@95 is our FPR95_OOD, its AUROC ours
        name = line[0] if line[0] in ("nearood", "farood") else f"openood_cifar10:{line[0]}"
        assert float(line[1]) == pytest.approx(float(by_set[name]["FPR95_OOD"]), abs=0.006)
        assert float(line[2]) == pytest.approx(float(by_set[name]["AUROC"]), abs=0.006)
        assert float(line[3]) == pytest.approx(float(by_set[name]["AUPR_IN_OPENOOD"]), abs=0.006)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["groups"]["farood"] == list(DATASETS["openood_cifar10"].ood_groups["farood"])
    assert saved["config"]["temperature"] == 0.01


def test_imagenet_missing_is_one_clear_error(tmp_path):
    home, bench = tmp_path / oo.HOME, oo.BENCHMARKS["openood_imagenet"]
    _write_list(home, bench, "test_imagenet.txt", [("imagenet_1k/val/ILSVRC2012_val_00000001.JPEG", 65)])
    with pytest.raises(UserError, match=r"ImageNet-1k is needed: put it under .*imagenet_1k/ as OpenOOD does"):
        load_dataset("openood_imagenet", "test", tmp_path, download=True)  # never downloaded, whatever the flag


def test_fpr95_openood_is_roc_curves_reading_on_ties_and_on_continuous_scores():
    """FPR95_OPENOOD restates scikit-learn's roc_curve (drop_intermediate) and OpenOOD's reading of it."""
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(1)
    differ = 0
    for case in range(600):
        n, m = rng.integers(1, 40, 2)
        tied = case % 2 == 0
        i = rng.integers(-4, 5, n).astype(float) if tied else rng.normal(size=n)
        o = rng.integers(-6, 3, m).astype(float) if tied else rng.normal(-0.5, 1, m)
        fpr, tpr, _ = roc_curve(np.r_[np.zeros(n), np.ones(m)], -np.r_[i, o])
        got = ood_metrics(i, o, ["FPR95_OPENOOD"])
        assert got["FPR95_OPENOOD"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)
        differ += got["FPR95_OPENOOD"] != got["FPR95_OOD"]
    assert differ > 0  # some cases reach a point that roc_curve drops (the hand-built one above always does)
