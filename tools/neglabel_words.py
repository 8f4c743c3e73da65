"""NegLabel's released word lists (its txtfiles/ folder) as a --neg-words file, parts of speech assigned as released.

    python -m tools.neglabel_words path/to/NegLabel/txtfiles neglabel_release_words.tsv
    python eval_ood_detection.py --preset neglabel-imagenet --neg-words neglabel_release_words.tsv
    python -m tools.neglabel_words --csp path/to/txtfiles csp_release_words.tsv      # CSP's pool (same txtfiles/)
    python eval_ood_detection.py --preset csp-imagenet --csp-words csp_release_words.tsv
    python -m tools.neglabel_words --negrefine NegRefine/output/imagenet/seed_0 negrefine_seed0.tsv
    python eval_ood_detection.py --preset negrefine-imagenet --negrefine-words negrefine_seed0.tsv

As XueJiang16/NegLabel 3253db6 mmcls/models/classifiers/multi_modal.py reads the folder: every file in os.listdir
order, its part of speech the name's first dot-separated part (adj.all, adj.pert, adj.ppl: adj; noun.*.txt: noun),
its words the stripped lines, and one dictionary shared by all files, so a word in an adjective file and a noun file
takes the part of speech of whichever file comes first (1,637 words do). That order is the filesystem's: the
authors' dump (8,578 nouns, 1,921 adjectives selected) fits an unsorted order in which about ten noun files come
before adj.all and adj.pert. `--order listdir` (the default) does what the release does on this machine; `--order
sorted` is reproducible everywhere (adjective files first). The output records which, and the NegLabel preset
counts a file written here as the release's pool.

With --csp, as MengyuanChen21/NeurIPS2024-CSP 3a7bdab reads the same files: noun.person, noun.quantity, noun.group
and adj.pert left out, and each adjective, in that order, replaced by "<adjective> <superclass>" with the
superclass drawn by Python's random seeded with 0 (so the labels, too, depend on the order).

With --adaneg, as YBZh/OpenOOD-VLM 694592a clip_for_wordnet_prepare.py reads them: every file, each part of speech
deduplicated, a word that is both kept as a noun only (its selection ranks by similarity, so order is moot).

With --negrefine, the folder is one of NegRefine's output/<set>/seed_<n>/ (ah-ansari/NegRefine 72e4b82): its refined
lists neg_labels_noun.txt then neg_labels_adj.txt, one label per line, in their order (as src/eval.py
--load_saved_labels reads the same lists from their .pkl copies).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from utils.atomic import atomic_path
from utils.data.words import CSP_LEFT_OUT, PARTS_OF_SPEECH, RELEASE_POOL_MARKS, conjugated
from utils.errors import UserError

ORDERS = ("listdir", "sorted")


def release_files(folder: Path, order: str = "listdir") -> list[str]:
    """The files of the release's txtfiles/ folder in the order it reads them; anything else is one clear error."""
    if not folder.is_dir():
        raise UserError(f"NegLabel word folder not found: {folder} (the release's txtfiles/)")
    names = os.listdir(folder) if order == "listdir" else sorted(os.listdir(folder))
    unknown = [name for name in names if name.split(".")[0] not in PARTS_OF_SPEECH]
    if unknown or not names:
        raise UserError(f"{folder} is not NegLabel's txtfiles/ folder: every file's name starts with noun. or adj. "
                        f"(found {', '.join(unknown[:5]) or 'no files'})")  # fmt: skip
    return names


def release_words(folder: Path, order: str = "listdir", csp: bool = False) -> list[tuple[str, str]]:
    """(word, part of speech) in the release's order, each word once (its first file's part of speech); with `csp`,
    CSP's files and its conjugated labels in place of the adjectives."""
    names = release_files(folder, order)
    if csp:
        names = [name for name in names if name.removesuffix(".txt") not in CSP_LEFT_OUT]
    words: dict[str, str] = {}
    for name in names:
        for line in (folder / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                words.setdefault(line.strip(), name.split(".")[0])
    if not csp:
        return list(words.items())
    labels = iter(conjugated([word for word, pos in words.items() if pos == "adj"]))
    return [(next(labels) if pos == "adj" else word, pos) for word, pos in words.items()]


def adaneg_words(folder: Path) -> list[tuple[str, str]]:
    """AdaNeg's candidates from the same files (OpenOOD-VLM 694592a clip_for_wordnet_prepare.py): every adj*.txt and
    noun*.txt, each part deduplicated, and a word in both parts kept as a noun only; nouns, then adjectives."""
    parts: dict[str, list[str]] = {pos: [] for pos in PARTS_OF_SPEECH}
    for name in release_files(folder, "sorted"):
        lines = (folder / name).read_text(encoding="utf-8").splitlines()
        parts[name.split(".")[0]] += [line.strip() for line in lines if line.strip()]
    nouns = list(dict.fromkeys(parts["noun"]))
    known = set(nouns)
    adjectives = [word for word in dict.fromkeys(parts["adj"]) if word not in known]
    return [*((w, "noun") for w in nouns), *((w, "adj") for w in adjectives)]


NEGREFINE_FILES = {"noun": "neg_labels_noun.txt", "adj": "neg_labels_adj.txt"}


def negrefine_words(folder: Path) -> list[tuple[str, str]]:
    """NegRefine's refined negatives: its noun list, then its adjective list (labels with their CSP suffix)."""
    missing = [name for name in NEGREFINE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder} is not a NegRefine output/<set>/seed_<n>/ folder: {', '.join(missing)} missing")
    return [(line.strip(), pos) for pos, name in NEGREFINE_FILES.items()
            for line in (folder / name).read_text(encoding="utf-8").splitlines() if line.strip()]  # fmt: skip


def write_words(words: Sequence[tuple[str, str]], path: Path, folder: Path, order: str, release: str) -> None:
    counts = {pos: sum(p == pos for _, p in words) for pos in PARTS_OF_SPEECH}
    header = (f"{RELEASE_POOL_MARKS[release]} {folder.resolve()}, files in {order} order; "
              f"{', '.join(f'{n} {pos}s' for pos, n in counts.items())}")  # fmt: skip
    comments = [w for w, _ in words if w.startswith("#")]
    if comments:
        raise UserError(f"words starting with '#' would read as comments in a --neg-words file: {comments[:5]}")
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join([header, *(f"{w}\t{pos}" for w, pos in words)]) + "\n", encoding="utf-8")
    print(f"{len(words)} words ({', '.join(f'{n} {pos}s' for pos, n in counts.items())}) in {path}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the release's txtfiles/ folder")
    parser.add_argument("out", type=Path, help="the --neg-words file to write")
    parser.add_argument("--order", choices=ORDERS, default="listdir",
                        help="file order: listdir = this filesystem's, as the release reads it; sorted = by name "
                             "(default: listdir)")  # fmt: skip
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--csp", action="store_true", help="CSP's pool from the same folder (--csp-words)")
    which.add_argument("--adaneg", action="store_true", help="AdaNeg's candidates from the same folder (--neg-words)")
    which.add_argument(
        "--negrefine",
        action="store_true",
        help="NegRefine's refined lists from an output/<set>/seed_<n>/ folder (--negrefine-words)",
    )
    args = parser.parse_args(argv)
    try:
        if args.negrefine:
            write_words(negrefine_words(args.folder), args.out, args.folder, "the release's", "negrefine")
        elif args.adaneg:
            write_words(adaneg_words(args.folder), args.out, args.folder, "sorted", "adaneg")
        else:
            words = release_words(args.folder, args.order, args.csp)
            write_words(words, args.out, args.folder, args.order, "csp" if args.csp else "neglabel")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
