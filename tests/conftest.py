"""Shared fixtures: the offline tiny CLIP and small image folders written to tmp_path."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.models.loading import ModelBundle, load_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny() -> ModelBundle:
    """The tiny CLIP with seeded random weights, on CPU."""
    return load_model("tiny", "none", device="cpu", seed=0)


def write_images(folder: Path, count: int, seed: int, size: int = 40, suffix: str = ".png") -> list[Path]:
    """Random-noise RGB images; different seeds give different pictures."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        path = folder / f"img_{k:03d}{suffix}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """An ImageFolder tree: two classes of 5 images each."""
    root = tmp_path / "tree"
    write_images(root / "cats", 5, seed=1)
    write_images(root / "dogs", 5, seed=2)
    return root


def assert_one_clear_error(call, capsys, expected: str, out: Path) -> str:
    """`call()` exits with code 2 and a message holding `expected`, no traceback, nothing written to `out`."""
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not out.exists()
    return err


def _fake_dtd(root):
    for split, name in [("train", "a.jpg"), ("val", "b.jpg"), ("test", "c.jpg")]:
        labels = root / "dtd" / "dtd" / "dtd" / "labels"
        labels.mkdir(parents=True, exist_ok=True)
        (labels / f"{split}1.txt").write_text(f"banded/{name}\nzigzagged/{name}\n")
        for texture in ("banded", "zigzagged"):
            write_images(root / "dtd" / "dtd" / "dtd" / "images" / texture, 1, seed=len(name), size=16, suffix=".jpg")
            (root / "dtd" / "dtd" / "dtd" / "images" / texture / "img_000.jpg").rename(
                root / "dtd" / "dtd" / "dtd" / "images" / texture / name
            )


@pytest.fixture
def imagenet_benchmark(tmp_path):
    """ImageNet-1k val (one tiny image per wnid), the MOS sets as their tarballs unpack, Textures as torchvision's."""
    from utils.data import classnames

    root = tmp_path / "data"
    for k, wnid in enumerate(classnames.imagenet1k()):
        write_images(root / "imagenet" / "val" / wnid, 1, seed=k, size=8)
    for k, folder in enumerate(["iNaturalist", "SUN", "Places"]):
        write_images(root / folder / "images", 4, seed=100 + k, size=16, suffix=".jpg")
    _fake_dtd(root)
    return root
