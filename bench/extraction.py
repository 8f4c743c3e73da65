"""Feature extraction: images/s of the whole pipeline against the model's forward pass alone.

The pipeline is JPEG decode -> preprocess -> model -> cache write; the forward pass runs on batches already in
memory; same model, batch size and image count.

python -m bench.extraction                      # ViT-B-32, random weights, 256 generated 500x375 JPEGs, CPU
python -m bench.extraction --device cuda --model ViT-B-16 --images 4096 --batch-size 256 --workers 8
"""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from bench.common import median_seconds, parser, report
from utils.data.splits import load_dataset
from utils.device import autocast
from utils.features.images import extract, feature_key
from utils.features.store import FeatureCache
from utils.models.loading import load_model
from utils.models.preprocess import TensorPreprocess


def write_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> None:
    """Smooth random pictures (upsampled noise plus grain) saved as quality-90 JPEGs, ImageNet-like in size."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        grain = rng.integers(-12, 13, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(coarse, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


@torch.no_grad()
def forward_only(bundle, batches: int, batch_size: int, size: int) -> None:
    images = torch.randn(batch_size, 3, size, size, device=bundle.device)
    for _ in range(batches):
        with autocast(bundle.device):
            bundle.model.encode_image(images).float().cpu()


GPU_VARIANTS = {
    "autocast": lambda model: model,
    "autocast + channels_last": lambda model: model.to(memory_format=torch.channels_last),
    "autocast + torch.compile": lambda model: torch.compile(model),
}


def gpu_rows(device: str, repeats: int, batch_size: int = 256, batches: int = 20) -> list[list]:
    """ViT-B/16 forward images/s on CUDA per variant; on a machine without a GPU, rows that say so."""
    if not (device.startswith("cuda") and torch.cuda.is_available()):
        return [[f"ViT-B-16 forward, CUDA {name}", "-", "not measured (no GPU)", "-"] for name in GPU_VARIANTS]
    rows = []
    for name, prepare in GPU_VARIANTS.items():
        bundle = load_model("ViT-B-16", "none", device=device)
        try:
            bundle.model.visual = prepare(bundle.model.visual)
            forward_only(bundle, 2, batch_size, 224)  # warm-up (and compilation)
            seconds, _ = median_seconds(lambda b=bundle: forward_only(b, batches, batch_size, 224), repeats)
            rows.append([f"ViT-B-16 forward, CUDA {name}", "-", batches * batch_size / seconds, "-"])
        except Exception as err:  # a variant this torch/GPU cannot run is reported, not fatal
            rows.append([f"ViT-B-16 forward, CUDA {name}", "-", f"failed: {type(err).__name__}", "-"])
    return rows


PIPELINES = ("pil", "tensor")


def pil_only(data, bundle, repeats: int) -> float:
    """Seconds to decode and preprocess every image with PIL in this process: the PIL pipeline's per-core limit."""
    return median_seconds(lambda: [bundle.preprocess(data.dataset[i][0]) for i in range(len(data.dataset))],
                          repeats)[0]  # fmt: skip


def tensor_only(data, bundle, batch_size: int, repeats: int) -> float:
    """Seconds to decode (decode_jpeg, batched, on the bundle's device) and preprocess every image as tensors."""
    files = [bytearray(Path(path).read_bytes()) for path, _ in data.dataset.samples]
    preprocess = TensorPreprocess(bundle.preprocess)

    def run() -> None:
        for start in range(0, len(files), batch_size):
            raw = [torch.frombuffer(f, dtype=torch.uint8) for f in files[start : start + batch_size]]
            preprocess(decode_jpeg(raw, mode=ImageReadMode.RGB, device=bundle.device))
        if bundle.device.type == "cuda":
            torch.cuda.synchronize()

    return median_seconds(run, repeats)[0]


@torch.no_grad()
def matches_direct_encoding(bundle, data, cache: FeatureCache, count: int = 4) -> bool:
    """The pipeline's cached rows against encode_image on the first images, loaded and preprocessed directly."""
    cached = cache.load(feature_key(bundle, data, cache.dtype)).features[:count].astype(np.float32)
    images = torch.stack([bundle.preprocess(data.dataset[i][0]) for i in range(count)]).to(bundle.device)
    with autocast(bundle.device):
        direct = torch.nn.functional.normalize(bundle.model.encode_image(images).float(), dim=-1).cpu().numpy()
    return bool(np.abs(cached - direct).max() < 5e-3)  # float16 storage


def main(argv: Sequence[str] | None = None) -> str:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture, random weights (default ViT-B-32)")
    p.add_argument("--images", type=int, default=256, help="generated JPEGs (default 256)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader processes to try (default 0 1 2)")
    args = p.parse_args(argv)
    model, count, batch_size, workers = args.model, args.images, args.batch_size, args.workers
    if args.smoke:
        model, count, batch_size, workers = "tiny", 24, 8, [0]
    repeats = 1 if args.smoke else args.repeats
    bundle = load_model(model, "none", device=args.device)
    size = bundle.preprocess.transforms[0].size if hasattr(bundle.preprocess, "transforms") else 224
    size = size if isinstance(size, int) else size[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_jpegs(Path(tmp) / "images", count, (500, 375))
        data = load_dataset(f"folder:{Path(tmp) / 'images'}")
        batches = -(-count // batch_size)
        forward_only(bundle, 1, batch_size, size)  # warm-up
        forward, _ = median_seconds(lambda: forward_only(bundle, batches, batch_size, size), repeats)
        rows.append(["forward pass only (batches in memory)", "-", batches * batch_size / forward])
        runs, first_cache = itertools.count(), {}
        for kind, n_workers in itertools.product(PIPELINES, workers):
            chosen = dataclasses.replace(bundle, pipeline=kind)

            def pipeline(chosen=chosen, n_workers: int = n_workers) -> None:
                cache = FeatureCache(Path(tmp) / f"cache-{next(runs)}")  # a fresh cache: no hits
                first_cache.setdefault(chosen.pipeline, cache)
                extract(chosen, data, cache, feature_key(chosen, data, cache.dtype), batch_size, n_workers)

            seconds, _ = median_seconds(pipeline, repeats)
            rows.append(
                [f"whole pipeline, {kind} (decode, preprocess, model, cache write)", n_workers, count / seconds]
            )
        rows.append(["PIL decode + preprocess alone, one process", "-", count / pil_only(data, bundle, repeats)])
        rows.append([f"decode_jpeg + tensor preprocess alone, batched on {args.device}", "-",
                     count / tensor_only(data, bundle, batch_size, repeats)])  # fmt: skip
        # The forward pass again, after: on a shared machine the rate drifts; the faster one is the reference.
        again, _ = median_seconds(lambda: forward_only(bundle, batches, batch_size, size), repeats)
        rows.append(["forward pass only, measured again after the pipeline", "-", batches * batch_size / again])
        forward_rate = batches * batch_size / min(forward, again)
        rows = [[*r, r[2] / forward_rate] if len(r) == 3 else r for r in rows]
        same = matches_direct_encoding(dataclasses.replace(bundle, pipeline="pil"), data, first_cache["pil"])
        same_tensor = matches_direct_encoding(dataclasses.replace(bundle, pipeline="tensor"), data,
                                              first_cache["tensor"])  # fmt: skip
    rows += gpu_rows(args.device, repeats)
    notes = [
        f"{model} with random weights on {args.device}, batch {batch_size}, {count} JPEGs of 500x375, "
        f"median of {repeats} repeat(s).",
        f"Cached features equal the model's output on the same images, preprocessed by hand (PIL): {same}; "
        f"through the tensor pipeline: {same_tensor}.",
    ]
    header = ["what runs", "loader workers", "images / s", "share of the faster forward-only rate"]
    return report("Extraction", header, rows,
                  notes)  # fmt: skip


if __name__ == "__main__":
    main()
