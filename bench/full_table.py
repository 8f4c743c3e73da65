"""A full results table (every score x 4 OOD sets): encoding once against re-encoding for every score.

Ours encodes each dataset once, then scores from the cache; the baseline re-encodes the images for every score,
as the predecessor code did (one run per score, no cache).

python -m bench.full_table                       # tiny CLIP on digits, 12 scores, 4 OOD sets, CPU
python -m bench.full_table --model ViT-B-32 --pretrained openai --device cuda
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Sequence
from pathlib import Path

import eval_ood_detection
from bench.common import median_seconds, parser, report
from bench.extraction import write_jpegs

SCORES = [
    "mcm",
    "mis",
    "energy",
    "entropy",
    "var",
    "oracle",
    "knn",
    "maha",
    "rmd",
    "lp_msp",
    "lp_energy",
    "lp_maxlogit",
]  # fmt: skip  (neglabel left out: its 71k-word text encoding would dominate both sides)
OOD = ["digits_ood", "faces", "skimage_textures"]


def main(argv: Sequence[str] | None = None) -> str:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="open_clip architecture (default tiny)")
    p.add_argument("--pretrained", default="none", help="open_clip tag or none (default none: random weights)")
    p.add_argument("--ckpt", help="weights from a checkpoint, e.g. make demo's results/demo/train/final.pt")
    args = p.parse_args(argv)
    scores, repeats = (["mcm", "knn", "maha"], 1) if args.smoke else (SCORES, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jpegs = 100 if args.smoke else 500
        write_jpegs(tmp / "jpegs", jpegs, (120, 90), seed=3)
        common = ["--in", "digits", "--model", args.model, "--pretrained", args.pretrained, "--device", args.device,
                  "--workers", "0", "--no-plots", "--out", *OOD, f"folder:{tmp / 'jpegs'}"]  # fmt: skip
        common += ["--ckpt", args.ckpt] if args.ckpt else []
        common += ["--limit", "64"] if args.smoke else []
        runs = itertools.count()

        def run(names: Sequence[str]) -> dict:
            folder = tmp / f"run{next(runs)}"  # a fresh cache: nothing is reused between runs
            argv = [*common, "--score", *names, "--cache-dir", str(folder / "cache"), "--out-dir", str(folder / "out")]
            return eval_ood_detection.main(argv)["metrics"]

        ours_seconds, ours = median_seconds(lambda: run(scores), repeats)
        redo_seconds, redo = median_seconds(lambda: {k: v for s in scores for k, v in run([s]).items()}, repeats)
    same = ours == redo
    rows = [
        ["re-encode the images for every score (one run per score)", redo_seconds, 1.0],
        ["ours: encode once, score from the cache", ours_seconds, redo_seconds / ours_seconds],
    ]
    notes = [
        f"{args.model} ({args.ckpt or args.pretrained}) on {args.device}; ID digits 0-4, OOD: {', '.join(OOD)} and "
        f"{jpegs} generated JPEGs; {len(scores)} scores ({', '.join(scores)}); median of {repeats} repeat(s).",
        f"Both ways give identical metrics: {same}.",
    ]
    return report("Full results table", ["how", "seconds", "speed-up"], rows, notes)


if __name__ == "__main__":
    main()
