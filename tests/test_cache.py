"""The feature cache: hits, misses on changed weights, atomic writes, skipped images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from utils.cache import FeatureCache
from utils.data import load_dataset
from utils.features import feature_key, image_features
from utils.models import load_model


class CountingEncoder:
    """Wraps encode_image to count forward passes."""

    def __init__(self, bundle, monkeypatch):
        self.calls = 0
        original = bundle.model.encode_image

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(bundle.model, "encode_image", counted)


@pytest.fixture
def digits():
    return load_dataset("digits", "test", limit=50)


def test_features_are_normalised_and_ordered(tiny, digits, tmp_path):
    entry = image_features(tiny, digits, FeatureCache(tmp_path, "float32"), batch_size=16, workers=0)
    assert entry.features.shape == (50, 64) and entry.features.dtype == np.float32
    assert np.allclose(np.linalg.norm(entry.features, axis=1), 1, atol=1e-5)
    assert np.array_equal(entry.index, np.arange(50))
    assert np.array_equal(entry.labels, [digits.dataset[i][1] for i in range(50)])
    with torch.no_grad():
        direct = tiny.model.encode_image(torch.stack([tiny.preprocess(digits.dataset[i][0]) for i in range(3)]))
    direct = torch.nn.functional.normalize(direct, dim=-1).numpy()
    assert np.allclose(entry.features[:3], direct, atol=1e-5)


def test_float16_storage_is_default(tiny, digits, tmp_path):
    cache = FeatureCache(tmp_path)
    entry = image_features(tiny, digits, cache, batch_size=16, workers=0)
    assert entry.features.dtype == np.float16
    full = image_features(tiny, digits, FeatureCache(tmp_path / "f32", "float32"), batch_size=16, workers=0)
    assert np.abs(entry.features.astype(np.float32) - full.features).max() < 2e-3


def test_second_call_hits_the_cache(tiny, digits, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    counter = CountingEncoder(tiny, monkeypatch)
    first = image_features(tiny, digits, cache, batch_size=16, workers=0)
    assert counter.calls == 4
    again = image_features(tiny, load_dataset("digits", "test", limit=50), cache, batch_size=16, workers=0)
    assert counter.calls == 4
    assert np.array_equal(first.features, again.features)


def test_changed_checkpoint_bytes_miss(tmp_path, digits):
    ckpt = tmp_path / "w.pt"
    model = load_model("tiny", "none", seed=0)
    torch.save(model.model.state_dict(), ckpt)
    a = load_model("tiny", "none", ckpt=str(ckpt))
    state = torch.load(ckpt, weights_only=True)
    state["visual.proj"] += 0.01
    torch.save(state, ckpt)  # same file name, new bytes
    b = load_model("tiny", "none", ckpt=str(ckpt))
    assert feature_key(a, digits, "float16") != feature_key(b, digits, "float16")
    other_limit = load_dataset("digits", "test", limit=49)
    assert feature_key(a, digits, "float16") != feature_key(a, other_limit, "float16")
    assert feature_key(a, digits, "float16") != feature_key(a, digits, "float32")


def test_crash_mid_extraction_leaves_nothing_valid(tiny, digits, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    original = tiny.model.encode_image
    calls = {"n": 0}

    def dies_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny.model, "encode_image", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        image_features(tiny, digits, cache, batch_size=16, workers=0)
    key = feature_key(tiny, digits, "float16")
    assert cache.load(key) is None
    assert not cache.path(key).exists()
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary folder is removed on the way out
    monkeypatch.setattr(tiny.model, "encode_image", original)
    assert image_features(tiny, digits, cache, batch_size=16, workers=0).features.shape == (50, 64)


def test_half_written_entry_is_ignored(tiny, digits, tmp_path, monkeypatch):
    """Simulate a crash that a rename could not protect: a final-named folder without valid metadata."""
    cache = FeatureCache(tmp_path)
    key = feature_key(tiny, digits, "float16")
    folder = cache.path(key)
    folder.mkdir(parents=True)
    np.save(folder / "features.npy", np.zeros((50, 64), dtype=np.float16))
    assert cache.load(key) is None  # no meta.json
    (folder / "meta.json").write_text(json.dumps({"complete": True, "rows": 50, "dim": 64}))
    assert cache.load(key) is None  # labels / index missing
    (folder / "meta.json").write_text("{ truncated")
    assert cache.load(key) is None
    counter = CountingEncoder(tiny, monkeypatch)
    entry = image_features(tiny, digits, cache, batch_size=16, workers=0)
    assert counter.calls == 4 and np.abs(entry.features.astype(np.float32)).sum() > 0


def test_skipped_images_are_warned_and_dropped(tiny, image_tree, tmp_path):
    (image_tree / "cats" / "zz_broken.png").write_bytes(b"garbage")
    data = load_dataset(f"folder:{image_tree}")
    cache = FeatureCache(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 1 of 11 images .*zz_broken.png"):
        entry = image_features(tiny, data, cache, batch_size=4, workers=0)
    assert entry.features.shape == (10, 64)
    broken = next(i for i, (p, _) in enumerate(data.dataset.samples) if p.name == "zz_broken.png")
    assert broken not in entry.index and len(entry.index) == 10
    assert list(entry.labels) == [data.dataset.samples[i][1] for i in entry.index]
    with pytest.warns(UserWarning, match="skipped 1 of 11"):  # still reported on a cache hit
        image_features(tiny, data, cache, batch_size=4, workers=0)


def test_every_image_unreadable(tiny, tmp_path):
    from utils.errors import UserError

    folder = tmp_path / "junk"
    folder.mkdir()
    for k in range(3):
        (folder / f"{k}.jpg").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(UserError, match="none of its 3 images could be read"):
        image_features(tiny, load_dataset(f"folder:{folder}"), FeatureCache(tmp_path / "c"), workers=0)


def test_worker_processes_give_the_same_features(tiny, digits, tmp_path):
    a = image_features(tiny, digits, FeatureCache(tmp_path / "a", "float32"), batch_size=8, workers=0)
    b = image_features(tiny, digits, FeatureCache(tmp_path / "b", "float32"), batch_size=8, workers=2)
    assert np.array_equal(a.features, b.features)


def test_folder_key_tracks_content_and_location(tmp_path, tiny):
    from tests.conftest import write_images

    write_images(tmp_path / "a" / "ood", 3, seed=0)
    write_images(tmp_path / "b" / "ood", 3, seed=1)  # same file names, other pictures, other place
    first = load_dataset(f"folder:{tmp_path / 'a' / 'ood'}")
    other_place = load_dataset(f"folder:{tmp_path / 'b' / 'ood'}")
    assert feature_key(tiny, first, "float16") != feature_key(tiny, other_place, "float16")
    write_images(tmp_path / "a" / "ood", 3, seed=5, size=48)  # same names, rewritten files
    rewritten = load_dataset(f"folder:{tmp_path / 'a' / 'ood'}")
    assert feature_key(tiny, first, "float16") != feature_key(tiny, rewritten, "float16")


def test_key_separates_architecture_and_precision(tiny, digits):
    import dataclasses

    import open_clip

    from utils.device import precision_tag

    quick = open_clip.create_model("tiny", force_quick_gelu=True)
    plain = open_clip.create_model("tiny")
    assert repr(quick) != repr(plain)  # QuickGELU shows in the module tree the key hashes
    assert feature_key(tiny, digits, "float16") != feature_key(
        dataclasses.replace(tiny, architecture="other"), digits, "float16"
    )
    assert precision_tag(torch.device("cpu")) == "fp32"


def test_publishing_onto_an_existing_entry_is_not_an_error(tmp_path):
    from utils.atomic import atomic_dir

    (tmp_path / "entry").mkdir()
    (tmp_path / "entry" / "meta.json").write_text("first")
    with atomic_dir(tmp_path / "entry") as tmp:
        (tmp / "meta.json").write_text("second")
    assert (tmp_path / "entry" / "meta.json").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_stale_temporary_folders_are_cleaned_live_ones_kept(tmp_path):
    import os
    import time

    cache = FeatureCache(tmp_path)
    old, live = tmp_path / ".abc.x.tmp", tmp_path / ".def.y.tmp"
    old.mkdir()
    live.mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    cache._clean_stale()
    assert not old.exists() and live.exists()


def test_transient_os_errors_are_not_recorded_as_bad_images():
    import errno

    from torch.utils.data import Dataset

    from utils.data.loading import Preprocessed

    class Flaky(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise OSError(errno.EMFILE, "Too many open files")

    with pytest.raises(OSError, match="Too many open files"):
        Preprocessed(Flaky(), lambda x: x)[0]
