"""Settings: each hyper-parameter of a score or a fine-tuning method, declared once where it is used.

A declaration names the setting, its type, default, help text, `--select` names and where its default comes from;
the flags, the help, the evaluation options, the `--select` grids and finetune_clip.py's method options are all
derived from it (utils/cli.py add_settings).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

MAX_INT = 2**31 - 1


def _bounded_int(text: str, low: int, high: int = MAX_INT) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    return _bounded_int(text, 0)


def _number(text: str, accept: Callable[[float], bool], what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and accept(value)):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_float(text: str) -> float:
    return _number(text, lambda v: v > 0, "a positive finite number")


def non_negative_float(text: str) -> float:
    return _number(text, lambda v: v >= 0, "a finite number >= 0")


def share(text: str) -> float:
    """A share of a whole, 0 included, 1 excluded (a warm-up's share of all steps)."""
    return _number(text, lambda v: 0 <= v < 1, "a share in [0, 1)")


def fraction(text: str) -> float:
    """A fraction in (0, 1] (a share that may be all)."""
    return _number(text, lambda v: 0 < v <= 1, "a fraction in (0, 1]")


def percentile(text: str) -> float:
    return _number(text, lambda v: 0 <= v <= 100, "a percentile in [0, 100]")


@dataclass(frozen=True)
class Setting:
    """One hyper-parameter, declared once on the score or fine-tuning objective that reads it.

    `name` is the keyword argument, the options key, the preset key and (with - for _) the flag; `source` says where
    the default comes from (a paper's table or an official config; "toolkit" for our own choice), and the tests
    hold every default to the value its source gives. `select` names it in `--select` grids (empty: not
    selectable); `nargs` "+" takes several values (a grid choice is then one of them).
    """

    name: str
    default: Any
    help: str
    source: str
    type: Callable[[str], Any] = str
    select: tuple[str, ...] = ()
    nargs: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    default_text: str | None = None  # how the default reads in the help where the value alone says too little

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> Any:
        """One command-line value (a --select grid entry): ValueError with the reason if it is not one."""
        try:
            value = self.type(text.strip())
        except (argparse.ArgumentTypeError, ValueError) as err:
            raise ValueError(f"{self.flag} {err}") from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.flag} takes one of {', '.join(self.choices)}, got {text!r}")
        return value

    def shown_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if self.default is None:
            return "none"
        if isinstance(self.default, (list, tuple)):
            return " ".join(map(str, self.default))
        if isinstance(self.default, float):  # 1e-05 as 1e-5
            return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m[1].replace('+', '')}{m[2]}", f"{self.default:g}")
        return str(self.default)

    def help_text(self, readers: Iterable[str] = (), own: dict[str, Any] | None = None) -> str:
        """The flag's help: what it does, who reads it, its default and where that comes from (`own`: readers
        with a default of their own, e.g. a method's paper's)."""
        who = ", ".join(readers)
        cited = "" if self.source == "toolkit" else f"; {self.source}"
        cited += "".join(f"; {owner}: {value}" for owner, value in (own or {}).items())
        return f"{who + ': ' if who else ''}{self.help} (default: {self.shown_default()}{cited})".replace("%", "%%")


def collect(owners: Iterable[tuple[str, Iterable[Setting]]]) -> dict[str, tuple[Setting, list[str]]]:
    """Every setting of `owners` ((owner name, its settings)) with the owners that read it, in first-seen order.

    One name is one declaration: two different declarations under one name are a programming error.
    """
    found: dict[str, tuple[Setting, list[str]]] = {}
    for owner, settings in owners:
        for setting in settings:
            known = found.setdefault(setting.name, (setting, []))
            if known[0] is not setting:
                raise TypeError(f"setting {setting.name!r} is declared twice ({owner} and {', '.join(known[1])})")
            if owner not in known[1]:
                known[1].append(owner)
    return found
