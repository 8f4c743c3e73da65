"""Features: the cache (hits, misses on changed weights, atomic writes, resume, skipped images), feature views in
the key, and the one text encoder against open_clip's zero-shot classifier."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data.splits import load_dataset
from utils.errors import UserError
from utils.features.images import feature_key, image_features
from utils.features.store import FeatureCache
from utils.features.text import encode_texts, text_embeddings
from utils.models.loading import load_model
from utils.prompts import load_templates


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
    # the same float32 features (same batches), rounded: unit-vector entries |x| < 1 move at most half a float16
    # spacing, 2^-12
    assert np.abs(entry.features.astype(np.float32) - full.features).max() <= 2.0**-12


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


def _interrupt(bundle, data, cache, monkeypatch, batch_size: int, call: int = 3, checkpoint_seconds: float = -1.0):
    """Extract until forward pass `call` is killed (checkpointing every `checkpoint_seconds`), then heal the model."""
    import utils.features.writer

    monkeypatch.setattr(utils.features.writer, "CHECKPOINT_SECONDS", checkpoint_seconds)
    original = bundle.model.encode_image
    calls = {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(bundle.model, "encode_image", dies)
    with pytest.raises(KeyboardInterrupt):
        image_features(bundle, data, cache, batch_size=batch_size, workers=0)
    monkeypatch.setattr(bundle.model, "encode_image", original)


@pytest.mark.parametrize(("checkpoint_seconds", "batches_left"), [(-1.0, 2), (1e9, 4)])
def test_interrupted_extraction_resumes_from_its_last_checkpoint(
    tiny, digits, tmp_path, monkeypatch, checkpoint_seconds, batches_left
):
    """Killed in batch 3 of 4: with a checkpoint after every batch only batches 3-4 are encoded again; with no
    checkpoint yet, all 4. Either way the entry equals an uninterrupted extraction and appears only when whole."""
    cache = FeatureCache(tmp_path / "resumed")
    _interrupt(tiny, digits, cache, monkeypatch, 16, checkpoint_seconds=checkpoint_seconds)
    key = feature_key(tiny, digits, "float16")
    assert cache.load(key) is None and not cache.path(key).exists()
    assert cache.partial_path(key).is_dir()
    counter = CountingEncoder(tiny, monkeypatch)
    resumed = image_features(tiny, digits, cache, batch_size=16, workers=0)
    assert counter.calls == batches_left
    assert not cache.partial_path(key).exists()
    assert sorted(p.name for p in cache.path(key).iterdir()) == ["features.npy", "index.npy", "labels.npy", "meta.json"]
    whole = image_features(tiny, digits, FeatureCache(tmp_path / "whole"), batch_size=16, workers=0)
    assert np.array_equal(resumed.features, whole.features)
    assert np.array_equal(resumed.labels, whole.labels) and np.array_equal(resumed.index, whole.index)


def test_partial_entry_of_another_layout_starts_afresh(tiny, digits, tmp_path, monkeypatch):
    """Progress made with another batch size (so other shard boundaries) is not reused."""
    cache = FeatureCache(tmp_path)
    _interrupt(tiny, digits, cache, monkeypatch, 16)
    counter = CountingEncoder(tiny, monkeypatch)
    image_features(tiny, digits, cache, batch_size=10, workers=0)
    assert counter.calls == 5


def test_resumed_extraction_keeps_the_skipped_images(tiny, image_tree, tmp_path, monkeypatch):
    (image_tree / "cats" / "aa_broken.png").write_bytes(b"garbage")  # row 0: skipped before the interruption
    data = load_dataset(f"folder:{image_tree}")
    cache = FeatureCache(tmp_path)
    _interrupt(tiny, data, cache, monkeypatch, 2, call=2)
    with pytest.warns(UserWarning, match="skipped 1 of"):
        resumed = image_features(tiny, data, cache, batch_size=2, workers=0)
    with pytest.warns(UserWarning, match="skipped 1 of"):
        whole = image_features(tiny, data, FeatureCache(tmp_path / "whole"), batch_size=2, workers=0)
    assert resumed.skipped == whole.skipped and "aa_broken.png" in resumed.skipped[0]["name"]
    assert np.array_equal(resumed.index, whole.index) and 0 not in resumed.index


def test_crash_while_publishing_starts_afresh(tiny, image_tree, tmp_path, monkeypatch):
    """Killed while compacting (rows already moved): the folder is no longer taken for resumable."""
    import utils.features.writer

    (image_tree / "cats" / "aa_broken.png").write_bytes(b"garbage")  # a skipped row, so compaction moves rows
    data = load_dataset(f"folder:{image_tree}")
    cache = FeatureCache(tmp_path)
    finish = utils.features.writer.finish_rows

    def dies_after_compacting(*args):
        finish(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(utils.features.writer, "finish_rows", dies_after_compacting)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning):
        image_features(tiny, data, cache, batch_size=4, workers=0)
    monkeypatch.setattr(utils.features.writer, "finish_rows", finish)
    counter = CountingEncoder(tiny, monkeypatch)
    with pytest.warns(UserWarning, match="skipped 1 of 11"):
        entry = image_features(tiny, data, cache, batch_size=4, workers=0)
    assert counter.calls == 3 and entry.features.shape == (10, 64)


def test_partial_entry_with_a_damaged_features_file_starts_afresh(tiny, digits, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    _interrupt(tiny, digits, cache, monkeypatch, 16)
    (cache.partial_path(feature_key(tiny, digits, "float16")) / "features.npy").write_bytes(b"\x93NUMPY broken")
    counter = CountingEncoder(tiny, monkeypatch)
    entry = image_features(tiny, digits, cache, batch_size=16, workers=0)
    assert counter.calls == 4
    whole = image_features(tiny, digits, FeatureCache(tmp_path / "whole"), batch_size=16, workers=0)
    assert np.array_equal(entry.features, whole.features)


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
@pytest.mark.parametrize(("rows", "batch_size"), [(50, 16), (7, 4), (1000, 256), (3, 5)])
def test_shards_tile_the_rows_at_batch_boundaries(rows, batch_size, world_size):
    from utils.features.writer import shard_rows

    shards = [shard_rows(rows, batch_size, r, world_size) for r in range(world_size)]
    assert [i for s in shards for i in s] == list(range(rows))
    assert all(s.start % batch_size == 0 for s in shards if len(s))


def test_one_run_at_a_time_extracts_a_key(tmp_path):
    from utils.features.store import _try_lock

    cache = FeatureCache(tmp_path)
    with cache.lock("abc"), open(tmp_path / ".locks" / "abc.lock", "a+") as other:
        assert not _try_lock(other)
    with open(tmp_path / ".locks" / "abc.lock", "a+") as other:
        assert _try_lock(other)


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


DAMAGE = {  # what a disk or a stray write can do to an entry's contents; its structure stays valid
    "zeroed rows": lambda folder: _edit(folder / "features.npy", lambda a: a.__setitem__(slice(0, 10), 0)),
    "bit flips": lambda folder: _flip(folder / "features.npy", [123, 2345, 6000]),  # of 50 x 64 x 2 bytes
    "a NaN": lambda folder: _edit(folder / "features.npy", lambda a: a.__setitem__((3, 5), np.nan)),
    "changed labels": lambda folder: _edit(folder / "labels.npy", lambda a: a.__setitem__(slice(0, 5), 4 - a[:5])),
    "a shuffled index": lambda folder: _edit(folder / "index.npy", lambda a: a.__setitem__(slice(0, 2), a[1::-1])),
}


def _edit(path: Path, change) -> None:
    array = np.load(path, mmap_mode="r+")
    change(array)
    array.flush()


def _flip(path: Path, positions: list[int]) -> None:
    data = bytearray(path.read_bytes())
    for position in positions:  # past the .npy header (128 bytes)
        data[128 + position] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_contents_are_found_said_and_encoded_again(tiny, digits, tmp_path, monkeypatch, capsys, kind):
    """Every block of rows, the labels and the index are checksummed when an entry is published; a run that reads
    an entry whose contents changed says so in one line and encodes it again, to the features a fresh run gets."""
    cache = FeatureCache(tmp_path)
    fresh = image_features(tiny, digits, cache, batch_size=16, workers=0)
    fresh = (np.array(fresh.features), fresh.labels.copy(), fresh.index.copy())
    key = feature_key(tiny, digits, "float16")
    DAMAGE[kind](cache.path(key))
    counter = CountingEncoder(tiny, monkeypatch)
    entry = image_features(tiny, digits, FeatureCache(tmp_path), batch_size=16, workers=0)  # another run
    assert counter.calls == 4  # encoded again
    assert np.array_equal(entry.features, fresh[0]) and np.array_equal(entry.labels, fresh[1])
    assert np.array_equal(entry.index, fresh[2])
    err = capsys.readouterr().err
    assert err.count("is damaged") == 1 and f"cache entry {key} (the global features of digits/test)" in err
    assert FeatureCache(tmp_path).load(key) is not None  # the new entry verifies


def test_an_entry_without_checksums_gets_them_once_and_is_then_verified(tiny, digits, tmp_path, capsys):
    """Entries written before checksums were kept are taken as they are, said once, and checksummed from then on."""
    cache = FeatureCache(tmp_path)
    image_features(tiny, digits, cache, batch_size=16, workers=0)
    key = feature_key(tiny, digits, "float16")
    meta_path = cache.path(key) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "checksums"}))
    assert FeatureCache(tmp_path).load(key) is not None
    assert "predates checksums: checksummed now" in capsys.readouterr().err
    assert json.loads(meta_path.read_text())["checksums"] == meta["checksums"]
    DAMAGE["zeroed rows"](cache.path(key))
    assert FeatureCache(tmp_path).load(key) is None


def test_an_entry_is_verified_once_per_process(tiny, digits, tmp_path, monkeypatch):
    import utils.features.store as store

    cache = FeatureCache(tmp_path)
    image_features(tiny, digits, cache, batch_size=16, workers=0)
    calls, real = [], store.damage
    monkeypatch.setattr(store, "damage", lambda *a: calls.append(1) or real(*a))
    key = feature_key(tiny, digits, "float16")
    fresh = FeatureCache(tmp_path)
    assert fresh.load(key) is not None and fresh.load(key) is not None and len(calls) == 1
    DAMAGE["zeroed rows"](cache.path(key))  # changed on disk since: verified again
    assert fresh.load(key) is None and len(calls) == 2


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


def test_precision_and_interpolation_enter_the_key(tiny, digits):
    """What a paper's preset asks for (fp32 or fp16 on CUDA, a bilinear resize) changes the features: and the key."""
    import dataclasses

    from torchvision.transforms import InterpolationMode, Resize

    from utils.device import autocast_dtype, precision_tag
    from utils.models.preprocess import with_interpolation

    cuda = torch.device("cuda")  # no GPU needed: the dtype is decided, not used
    assert (autocast_dtype(cuda, "fp32"), autocast_dtype(cuda, "fp16"), autocast_dtype(cuda, "bf16")) == (
        None, torch.float16, torch.bfloat16)  # fmt: skip
    assert autocast_dtype(torch.device("cpu"), "fp16") is None  # CPU computes in full precision
    assert precision_tag(cuda, "fp32") != precision_tag(cuda, "fp16")
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        autocast_dtype(cuda, "fp8")
    bilinear = with_interpolation(tiny.preprocess, "bilinear")
    resize = next(t for t in bilinear.transforms if isinstance(t, Resize))
    assert resize.interpolation == InterpolationMode.BILINEAR
    assert (
        next(t for t in tiny.preprocess.transforms if isinstance(t, Resize)).interpolation == InterpolationMode.BICUBIC
    )
    assert with_interpolation(tiny.preprocess, "model") is tiny.preprocess
    changed = dataclasses.replace(tiny, preprocess=bilinear)
    assert feature_key(changed, digits, "float16") != feature_key(tiny, digits, "float16")
    image = digits.dataset[0][0].resize((45, 45))
    assert not torch.equal(bilinear(image), tiny.preprocess(image))
    with pytest.raises(UserError, match="no Resize step"):
        with_interpolation(lambda image: image, "bilinear")


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
    old_partial, resumable = tmp_path / ".abc.partial", tmp_path / ".def.partial"
    for folder in (old, live, old_partial, resumable):
        folder.mkdir()
    two_days_ago, eight_days_ago = time.time() - 2 * 24 * 3600, time.time() - 8 * 24 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    os.utime(resumable, (two_days_ago, two_days_ago))  # an interrupted extraction waits a week to be resumed
    os.utime(old_partial, (eight_days_ago, eight_days_ago))
    cache.clean_stale()
    assert not old.exists() and live.exists()
    assert not old_partial.exists() and resumable.exists()


def test_transient_os_errors_are_not_recorded_as_bad_images():
    import errno

    from torch.utils.data import Dataset

    from utils.data.loaders import Preprocessed

    class Flaky(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise OSError(errno.EMFILE, "Too many open files")

    with pytest.raises(OSError, match="Too many open files"):
        Preprocessed(Flaky(), lambda x: x)[0]


def test_interrupted_text_encoding_resumes(tiny, tmp_path, monkeypatch):
    """Long word lists (NegLabel's 75k) go through the same resumable writer: batch 3 of 4 killed, 2 redone."""
    import utils.features.text
    import utils.features.writer
    from utils.prompts import TEMPLATE_SETS

    monkeypatch.setattr(utils.features.writer, "CHECKPOINT_SECONDS", -1.0)
    monkeypatch.setattr(utils.features.text, "NAMES_PER_ENTRY_WRITE", 3)
    names, templates = [f"word{i}" for i in range(10)], TEMPLATE_SETS["single"]
    original, calls = utils.features.text._averaged, []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(utils.features.text, "_averaged", counted)
    cache = FeatureCache(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        text_embeddings(tiny, names, templates, cache)
    resumed = text_embeddings(tiny, names, templates, cache)
    assert len(calls) == 5  # 2 before the interruption, the failing one, then batches 3 and 4
    whole = text_embeddings(tiny, names, templates, FeatureCache(tmp_path / "whole"))
    assert resumed.shape == (10, 64) and np.array_equal(resumed, whole)


@pytest.mark.parametrize("templates", ["single", "ensemble"])
@pytest.mark.parametrize("per_forward", [1024, 7])
def test_text_embeddings_equal_open_clip_zero_shot_classifier(tiny, templates, per_forward, monkeypatch):
    """The one text encoder gives open_clip's zero-shot classifier (template-averaged, renormalised), any batching."""
    import open_clip

    import utils.features.text

    monkeypatch.setattr(utils.features.text, "PROMPTS_PER_FORWARD", per_forward)
    names = ["cat", "dog", "airplane", "a very long class name with many words"]
    chosen = load_templates(templates)
    ours = text_embeddings(tiny, names, chosen)
    reference = open_clip.build_zero_shot_classifier(tiny.model, tiny.tokenizer, names, chosen, device="cpu")
    assert ours.shape == (len(names), tiny.embed_dim) and ours.dtype == np.float32
    if per_forward == 1024:  # the same batches as open_clip's here: the same arithmetic, bit for bit
        assert np.array_equal(ours, reference.T.numpy())
    else:  # other batch shapes may block the matrix products differently: float32 rounding, far below 1e-6
        assert np.allclose(ours, reference.T.numpy(), atol=1e-6)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_encode_texts_is_differentiable_and_as_is_matches(tiny):
    prompts = ["a photo of a cat.", "something else entirely"]
    encoded = encode_texts(tiny, prompts)
    assert encoded.requires_grad and encoded.dtype == torch.float32
    assert np.allclose(encoded.detach().numpy(), text_embeddings(tiny, prompts), atol=1e-6)  # AS_IS: prompts as is
    with torch.no_grad():
        reference = tiny.model.encode_text(tiny.tokenizer(prompts), normalize=True)
    assert torch.allclose(encoded.detach(), reference, atol=1e-6)


def test_text_inputs_are_checked(tiny):
    from utils.errors import UserError
    from utils.models.loading import load_model as load

    with pytest.raises(UserError, match="empty"):
        text_embeddings(tiny, [])
    with pytest.raises(UserError, match="no text encoder"):
        encode_texts(load("timm:test_vit", "none"), ["a cat"])


def test_view_is_part_of_the_key(tiny, digits, monkeypatch):
    import utils.features.images as images
    from utils.errors import UserError

    patches = images.View(encode=lambda bundle, x: bundle.model.encode_image(x)[:, None], tokens=lambda b: 1,
                          description="a second view, for the test")  # fmt: skip
    monkeypatch.setitem(images.VIEWS, "other", patches)
    assert feature_key(tiny, digits, "float16", "global") != feature_key(tiny, digits, "float16", "other")
    assert feature_key(tiny, digits, "float16") == feature_key(tiny, digits, "float16", "global")
    with pytest.raises(UserError, match="unknown feature view"):
        images.get_view("nope")


def test_the_local_views_first_token_is_the_global_view(tiny, digits, tmp_path):
    from utils.features.images import first_token

    cache = FeatureCache(str(tmp_path), "float32")
    local = image_features(tiny, digits, cache, 64, 0, view="local")
    derived, direct = first_token(local, tiny.embed_dim), image_features(tiny, digits, cache, 64, 0)
    np.testing.assert_allclose(derived.features, direct.features, atol=1e-6)
    assert np.array_equal(derived.labels, direct.labels) and np.array_equal(derived.index, direct.index)


@pytest.fixture
def awkward_jpegs(tmp_path):
    """500 x 375 JPEGs (baseline, progressive, grayscale, CMYK), a PNG, a truncated JPEG and a non-image."""
    from bench.extraction import write_jpegs

    folder = tmp_path / "photos"
    write_jpegs(folder, 6, (500, 375))
    with Image.open(folder / "00000.jpg") as image:
        image.save(folder / "progressive.jpg", progressive=True, quality=85)
        image.convert("L").save(folder / "gray.jpg")
        image.convert("CMYK").save(folder / "cmyk.jpg")
        image.save(folder / "lossless.png")
    (folder / "truncated.jpg").write_bytes((folder / "00001.jpg").read_bytes()[:3000])
    (folder / "notes.jpg").write_bytes(b"not an image at all")
    return folder


@pytest.mark.parametrize("name", ["digits", "photos"])
def test_tensor_pipeline_matches_the_pil_pipeline(tiny, tmp_path, awkward_jpegs, name):
    """Same images kept and skipped, features within cosine 0.999 of PIL's, per image; on CPU tensors, as on CUDA."""
    import dataclasses

    from utils.features.images import pipeline_of

    data = load_dataset("digits", "test") if name == "digits" else load_dataset(f"folder:{awkward_jpegs}")
    got = {}
    for pipeline in ("pil", "tensor"):
        bundle = dataclasses.replace(tiny, pipeline=pipeline)
        assert pipeline_of(bundle) == pipeline
        with pytest.warns(UserWarning) if name == "photos" else contextlib.nullcontext():
            got[pipeline] = image_features(bundle, data, FeatureCache(tmp_path / "cache"), batch_size=4, workers=0)
    pil, tensor = got["pil"], got["tensor"]
    assert np.array_equal(pil.index, tensor.index) and np.array_equal(pil.labels, tensor.labels)
    assert [s["name"] for s in pil.skipped] == [s["name"] for s in tensor.skipped]
    if name == "photos":
        assert sorted(Path(s["name"]).name for s in pil.skipped) == ["notes.jpg", "truncated.jpg"]
    cosines = (np.asarray(pil.features, np.float64) * np.asarray(tensor.features, np.float64)).sum(1)
    assert cosines.min() >= 0.999, cosines.min()
    assert feature_key(dataclasses.replace(tiny, pipeline="tensor"), data, "float16") != feature_key(
        dataclasses.replace(tiny, pipeline="pil"), data, "float16")  # fmt: skip


def test_pipeline_choice(tiny):
    import dataclasses

    from utils.features.images import pipeline_of

    assert pipeline_of(tiny) == "pil"  # auto on CPU
    assert pipeline_of(dataclasses.replace(tiny, pipeline="auto", device=torch.device("cuda"))) == "tensor"
    odd = dataclasses.replace(tiny, preprocess=lambda image: image, pipeline="tensor")
    with pytest.raises(UserError, match="--pipeline tensor: the tensor pipeline cannot restate"):
        pipeline_of(odd)
    assert pipeline_of(dataclasses.replace(odd, pipeline="auto", device=torch.device("cuda"))) == "pil"
