"""Command-line pieces shared by the entry scripts: common flags, clean errors, run folders and metadata."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from utils.device import DEVICES
from utils.errors import UserError
from utils.features.store import DTYPES
from utils.models import DEFAULT_MODEL, DEFAULT_PRETRAINED
from utils.settings import Setting, non_negative_int, positive_int

T = TypeVar("T")
PACKAGES = ("torch", "torchvision", "open_clip_torch", "numpy", "scikit-learn", "scikit-image", "timm")


def list_action(lines: Callable[[], Iterable[str]]) -> type[argparse.Action]:
    """A flag that prints `lines()` (one per line) and exits, e.g. --list-models."""

    class ListAndExit(argparse.Action):
        def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any):
            super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

        def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
            print("\n".join(lines()))
            parser.exit()

    return ListAndExit


def _models() -> list[str]:
    from utils.models.loading import list_models_with_tags  # open_clip's registry: the one slow --list-*

    return list_models_with_tags()


def _datasets() -> list[str]:
    from utils.data.registry import DATASETS

    return [f"{name:34} {'/'.join(spec.splits):16} {spec.source}" for name, spec in DATASETS.items()]


def add_settings(parser: argparse.ArgumentParser, settings: dict[str, tuple[Setting, list[str]]], title: str,
                 overrides: dict[str, dict[str, Any]] | None = None) -> None:  # fmt: skip
    """One flag per declared setting (utils/settings.py): its type, default and help, with the names of its readers
    (scores or methods) in front of the help. `overrides` (setting -> {owner: value}): owners with their own default
    (a method's paper's); such a flag defaults to None, for the caller to fill in."""
    group = parser.add_argument_group(title)
    for name, (setting, readers) in settings.items():
        own = (overrides or {}).get(name, {})
        extra = {"nargs": setting.nargs, "metavar": setting.metavar, "choices": setting.choices}
        help_text = setting.help_text(_short(readers), own)
        group.add_argument(setting.flag, dest=name, type=setting.type, default=None if own else setting.default,
                           help=help_text, **{k: v for k, v in extra.items() if v})  # fmt: skip


def _short(readers: list[str]) -> list[str]:
    """Reader names for a help text: pytorch-ood's many detectors as one `pood:*` entry."""
    pood = [r for r in readers if r.startswith("pood:")]
    return [r for r in readers if r not in pood] + (["pood:*" if len(pood) > 2 else ", ".join(pood)] if pood else [])


def check_writable_dir(path: str | Path, flag: str) -> None:
    """Fail before any work when `path` cannot become a folder we can write in."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a folder")
    ancestor = next(p for p in (path, *path.parents) if p.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot create or write in {ancestor}")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"open_clip architecture, or `tiny` for offline tests (default: {DEFAULT_MODEL})",
    )
    group.add_argument(
        "--pretrained",
        default=DEFAULT_PRETRAINED,
        help=f"open_clip pretrained tag, or `none` for random weights (default: {DEFAULT_PRETRAINED})",
    )
    group.add_argument(
        "--ckpt",
        default=None,
        help="local weights (state dict: .pt/.pth/.bin or .safetensors); replaces the tag's weights",
    )
    group.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help="where the model runs; auto = cuda if available (default: auto)",
    )
    group.add_argument(
        "--model-cache-dir", default=None, help="where downloaded weights live (default: the Hugging Face hub cache)"
    )
    group.add_argument("--list-models", action=list_action(_models),
                       help="print every architecture and its tags, then exit")  # fmt: skip


def add_data_args(parser: argparse.ArgumentParser, batch_size: bool = True) -> None:
    """--data-root and the other data and feature-cache flags (`batch_size`: with --batch-size, images per forward
    pass; a script that trains declares its own)."""
    group = parser.add_argument_group("data and features")
    group.add_argument("--data-root", default="./data", help="folder holding the datasets (default: ./data)")
    group.add_argument("--list-datasets", action=list_action(_datasets),
                       help="print every registered dataset, its splits and where to get it, then exit")  # fmt: skip
    group.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="download datasets torchvision can fetch (default: on)",
    )
    group.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="use a seeded random subset of at most N images per dataset (default: all)",
    )
    group.add_argument(
        "--seed", type=non_negative_int, default=0,
        help="seed for --limit and --shots subsets and random init (default: 0)",
    )  # fmt: skip
    group.add_argument("--shots", type=positive_int, default=None, metavar="K",
                       help="few-shot protocols: K seeded images per class of the ID train split (1, 2, 4, 8, 16 in "
                            "the papers; a class with fewer keeps all) (default: all)")  # fmt: skip
    if batch_size:
        group.add_argument(
            "--batch-size", type=positive_int, default=256, help="images per forward pass (default: 256)"
        )
    group.add_argument(
        "--workers",
        type=non_negative_int,
        default=min(8, os.cpu_count() or 1),
        help="data loading processes; 0 loads in the main process (default: min(8, CPUs))",
    )
    group.add_argument("--cache-dir", default="./cache/features", help="feature cache (default: ./cache/features)")
    group.add_argument(
        "--feature-dtype",
        default="float16",
        choices=list(DTYPES),
        help="storage type of cached features (default: float16)",
    )


def from_args(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """A config dataclass built by keyword: each field from the parsed argument of the same name, unless `given`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {unknown}")
    return cls(**{n: getattr(args, n) for n in names if hasattr(args, n) and n not in given}, **given)


def given_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The destinations of the arguments written on the command line (whatever their value), not the defaults."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return set(vars(quiet.parse_known_args(argv)[0]))


def option_strings(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Destination -> its longest flag (`id_name` -> `--in`), for messages."""
    return {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}


def guarded(run: Callable[[argparse.Namespace], T], args: argparse.Namespace) -> T:
    """Run an entry point; a UserError becomes `error: ...` on stderr and exit status 2, with no traceback."""
    try:
        return run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def run_folder(out_dir: str | None, default: Sequence[str], overwrite: bool = False, owned: Sequence[str] = ()) -> Path:
    """The results folder: `--out-dir`, else results/<default...>/<timestamp>.

    A folder that already holds results is never reused silently: a numbered sibling is made instead, unless
    `overwrite`; then the earlier run's files (those matching the `owned` patterns) are removed first, so that
    nothing of it (a figure of a score this run does not have) is left beside the new results.
    """
    parts = [re.sub(r"[/\\:]+", "_", part).strip("_") or "_" for part in default]  # hf-hub:org/repo: one folder
    path = Path(out_dir) if out_dir else Path("results", *parts, time.strftime("%Y%m%d-%H%M%S"))
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            base, number = path, 1
            while path.exists():
                path = base.with_name(f"{base.name}-{number}")
                number += 1
            print(f"{base} already holds results; writing to {path} instead (--overwrite to reuse it)",
                  file=sys.stderr)  # fmt: skip
        elif earlier := sorted({p for pattern in owned for p in path.glob(pattern)}):
            for item in earlier:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
            print(f"--overwrite: removed the earlier run's {len(earlier)} files from {path}", file=sys.stderr)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_metadata(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved configuration, code version and package versions, saved beside every result."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "config": {k: v for k, v in vars(args).items()},
        "argv": sys.argv,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "packages": versions,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
