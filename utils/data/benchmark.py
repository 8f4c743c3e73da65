"""The benchmark of a run, resolved once: ID splits, OOD sets under their protocol, shifted ID, validation sets.

Also --ood-split's splits and the near/far mean-row groups of the results. Every name is looked up in the registry
once, before anything is downloaded; each loaded set carries its registry entry onward.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from utils.data.full_spectrum import full_spectrum
from utils.data.registry import DatasetSpec, family, get_spec
from utils.data.splits import DataOptions, LoadedDataset, renamed
from utils.data.validation import Validation, named_split, validation_data
from utils.errors import UserError


@dataclass(frozen=True)
class BenchmarkRequest:
    """What the command line asks of the data (eval_ood_detection.py's --in, --out, --ood-split, ...)."""

    id_name: str
    out: Sequence[str] | None = None  # OOD sets; None: the ID set's standard partners
    ood_splits: dict[str, str] = field(default_factory=dict)  # OOD set -> the split read instead of test
    shifted_id: Sequence[str] = ()  # covariate-shifted sets counted as ID (full-spectrum)
    ood_resize: bool = True  # apply the ID benchmark's OOD resolution
    classnames: Sequence[str] | None = None  # other names for the ID classes, in class order (--classnames)
    select_ood: Sequence[str] = ()  # --select's OOD validation sets, NAME[=SPLIT]
    select_holdout: float = 0.1  # --select's share of ID train held out where the ID set has no val split
    trained_outliers: Sequence[str] = ()  # the outlier pools the model was fine-tuned on (its checkpoint's contract)
    allow_overlap: bool = False  # score OOD sets that are such a pool anyway (recorded)

    def specs(self) -> dict[str, DatasetSpec]:
        """The registry entry of every name asked for: an unknown name fails here, before any download."""
        specs = {self.id_name: get_spec(self.id_name)}
        ood = self.ood_names(specs[self.id_name])
        for name in [*ood, *self.shifted_id]:
            specs.setdefault(name, get_spec(name))
        for item in self.select_ood:
            name, _, spec = named_split(item)
            specs.setdefault(name, spec)
        stray = sorted(set(self.ood_splits) - set(ood))
        if stray:
            raise UserError(f"--ood-split names {', '.join(stray)}, which is not among the OOD sets ({', '.join(ood)})")
        for name, split in self.ood_splits.items():
            if split not in specs[name].splits:
                raise UserError(f"--ood-split {name}={split}: {name} has no '{split}' split (it has: "
                                f"{', '.join(specs[name].splits)})")  # fmt: skip
        self._refuse_id_as_ood(ood)
        return specs

    def _refuse_id_as_ood(self, ood: Sequence[str]) -> None:
        """An OOD set may not hold the ID images (the ID set itself, a shifted set counted as ID, a set of the same
        source); an outlier pool the model trained on only with allow_overlap."""
        counted_id = {family(n): n for n in [self.id_name, *self.shifted_id]}
        for name in ood:
            if family(name) in counted_id:
                same = counted_id[family(name)]
                why = "is" if same == name else f"holds images from the same source ({family(name)}) as"
                raise UserError(f"OOD set {name} {why} the ID set {same}: its images would be scored as OOD and as "
                                f"ID alike")  # fmt: skip
        trained = {family(n): n for n in self.trained_outliers}
        for name in [*ood, *(item.partition("=")[0] for item in self.select_ood)]:
            if family(name) in trained and not self.allow_overlap:
                raise UserError(f"OOD set {name} is the outlier pool {trained[family(name)]} that the --ckpt model was "
                                f"fine-tuned on: its images are not unseen; pass --allow-overlap to score it anyway "
                                f"(recorded)")  # fmt: skip

    def ood_names(self, id_spec: DatasetSpec) -> list[str]:
        names = list(self.out) if self.out else [n for n in id_spec.ood if n != self.id_name]
        if not names:
            raise UserError(f"'{self.id_name}' has no default OOD sets; name some with --out")
        return names


def parse_ood_splits(pairs: Sequence[str]) -> dict[str, str]:
    """--ood-split's NAME=SPLIT pairs."""
    splits = {}
    for pair in pairs:
        name, sep, split = pair.rpartition("=")
        if not sep or not name or not split:
            raise UserError(f"--ood-split takes NAME=SPLIT, e.g. imagenet10_mcm=train; got '{pair}'")
        splits[name] = split
    return splits


@dataclass
class Benchmark:
    """The loaded data of a run and how it was prepared (recorded with the results). Resolved in two steps, so that
    what the ID data decide is checked before any OOD set is fetched: resolve_id, then resolve_ood."""

    request: BenchmarkRequest
    specs: dict[str, DatasetSpec]  # every name's registry entry, looked up once
    id_test: LoadedDataset  # with the shifted sets joined, where asked
    id_train: LoadedDataset | None
    protocol: dict  # the OOD protocol as applied: resolution, per-class caps, source
    id_parts: list[LoadedDataset] = field(default_factory=list)  # the ID test split and each shifted set, as loaded
    ood_sets: list[LoadedDataset] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # default OOD sets not available here -> why
    overlaps: list[str] = field(default_factory=list)  # OOD sets the model trained on as outliers (allow_overlap)
    validation: Validation | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> DatasetSpec:
        return self.specs[self.request.id_name]

    def groups(self) -> tuple[dict[str, tuple[str, ...]], list[str]]:
        """The ID set's mean-row groups over the OOD sets read from their test split (see mean_groups)."""
        return mean_groups([d.name for d in self.ood_sets if d.split == "test"], self.spec.ood_groups)


def mean_groups(tested: Sequence[str], groups: dict[str, tuple[str, ...]]) -> tuple[dict, list[str]]:
    """The groups (OpenOOD's nearood/farood) whose sets were all `tested`, and a note per group left out, naming the
    sets it lacks."""
    complete = {g: sets for g, sets in groups.items() if set(sets) <= set(tested)}
    notes = [f"no {group} mean row: {', '.join(n for n in members if n not in tested)} not evaluated on its test split"
             for group, members in groups.items() if group not in complete]  # fmt: skip
    return complete, notes


def resolve_id(request: BenchmarkRequest, data: DataOptions, needs_train: bool,
               specs: dict[str, DatasetSpec] | None = None) -> Benchmark:  # fmt: skip
    """The ID side of the run: the test split (with --classnames, and the shifted sets joined by class) and, where
    `needs_train`, the train split (`specs`: request.specs(), where the caller has them)."""
    specs = specs or request.specs()
    spec = specs[request.id_name]
    id_test = data.load(request.id_name, "test", spec=spec)
    id_train = data.load_id_train(request.id_name, spec) if needs_train else None
    if request.classnames:
        id_test = renamed(id_test, list(request.classnames))
        id_train = id_train and renamed(id_train, list(request.classnames))
    plain, shifted = id_test, [data.load(name, "test", spec=specs[name]) for name in request.shifted_id]
    notes = list(id_train.notes) if id_train else []
    if shifted:
        id_test = full_spectrum(plain, shifted)
        notes.append(f"full-spectrum ID: the {len(id_test.dataset)} ID test images are {plain.name}'s "
                     f"{len(plain.dataset)} and those of {', '.join(request.shifted_id)}, labelled by "
                     f"class")  # fmt: skip
    protocol = {"resolution": spec.ood_protocol.resolution if request.ood_resize else None,
                "per_class": spec.ood_protocol.per_class, "source": spec.ood_protocol.source}  # fmt: skip
    return Benchmark(request, specs, id_test, id_train, protocol, [plain, *shifted], notes=notes)


def resolve_ood(bench: Benchmark, data: DataOptions, select: bool) -> Benchmark:
    """The OOD side, into `bench`: the OOD sets under the ID benchmark's protocol and, where `select`, --select's
    validation sets (never a test set, the ID test images included)."""
    request, resolution = bench.request, bench.protocol["resolution"]
    bench.ood_sets = load_ood_sets(request, data, bench.specs, bench.skipped)
    bench.notes += [f"skipped default OOD set {name}: {reason}" for name, reason in bench.skipped.items()]
    if select:
        bench.validation = validation_data(bench.spec, request.id_name, data, request.select_ood,
                                           request.select_holdout, [*bench.id_parts, *bench.ood_sets], resolution,
                                           bench.id_train)  # fmt: skip
        if request.classnames:
            bench.validation.id_val = renamed(bench.validation.id_val, list(request.classnames))
    trained = {family(n): n for n in request.trained_outliers}
    for data_set in [*bench.ood_sets, *(bench.validation.ood_val if bench.validation else [])]:
        if family(data_set.name) in trained:  # only here with allow_overlap
            bench.overlaps.append(data_set.name)
            bench.notes.append(f"--allow-overlap: {data_set.name} is the outlier pool {trained[family(data_set.name)]} "
                               f"the model was fine-tuned on; its numbers are not those of unseen outliers")  # fmt: skip
    if resolution:
        bench.notes.append(f"OOD images resized to {resolution}x{resolution} first ({bench.protocol['source']}; "
                           f"--no-ood-resize keeps them as they are)")  # fmt: skip
    return bench


def load_ood_sets(request: BenchmarkRequest, data: DataOptions, specs: dict[str, DatasetSpec] | None = None,
                  skipped: dict[str, str] | None = None) -> list[LoadedDataset]:  # fmt: skip
    """OOD test sets: those named (each must be available) or the ID set's defaults (a missing one is skipped, with
    the reason in `skipped`), prepared as the ID benchmark's protocol says (CIFAR: SVHN's first 1,000 per class;
    every image 32 x 32 unless `ood_resize` is off). --ood-split reads another split of a set (MCM's ImageNet-20:
    ImageNet-10's train split). `specs`: request.specs(), where the caller has them."""
    specs = specs or request.specs()
    spec = specs[request.id_name]
    size = spec.ood_protocol.resolution if request.ood_resize else None
    names = request.ood_names(spec)
    loaded = []
    for name in names:
        try:
            split = request.ood_splits.get(name, "test")
            per_class = spec.ood_protocol.per_class.get(name)
            loaded.append(data.load(name, split, resize=size, per_class=per_class, spec=specs[name]))
        except UserError as err:
            if request.out:
                raise
            reason = " ".join(line.strip() for line in str(err).splitlines())
            print(f"skipping default OOD set {name}: {reason}", file=sys.stderr)
            if skipped is not None:
                skipped[name] = reason
    if not loaded:
        raise UserError(
            f"none of the default OOD sets of '{request.id_name}' ({', '.join(names)}) is available under "
            f"{data.root}; get one (see the lines above) or name a folder with --out folder:PATH"
        )
    return loaded
