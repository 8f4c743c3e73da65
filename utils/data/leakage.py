"""Guard against auxiliary outliers that overlap the OOD sets a fine-tuned model will be evaluated on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from utils.data import LoadedDataset, get_spec, load_dataset
from utils.errors import UserError


def _files(data: LoadedDataset) -> set[Path]:
    samples = getattr(data.dataset, "samples", None) or []
    return {Path(path).resolve() for path, _ in samples}


def check_no_leakage(
    aux: LoadedDataset, ood_names: Sequence[str], root: str | Path, id_data: LoadedDataset | None = None
) -> None:
    """Refuse an auxiliary pool that is, or shares classes or image files with, the ID set or an evaluation OOD set."""
    aux_classes = {c.lower() for c in aux.classnames or []}
    aux_files = _files(aux)
    if id_data is not None:
        shared = aux_classes & {c.lower() for c in id_data.classnames or []}
        if aux.name == id_data.name or shared or aux_files & _files(id_data):
            what = f"classes {', '.join(sorted(shared)[:10])}" if shared else "images"
            raise UserError(f"--aux {aux.name} overlaps the ID set {id_data.name} ({what}): the outlier pool would "
                            f"teach the model that ID images are OOD")  # fmt: skip
    for name in ood_names:
        if name == aux.name:
            raise UserError(f"--aux {aux.name} is also an OOD test set ({name}): outliers seen in training would be "
                            f"scored as unseen; pick another auxiliary pool or other --eval-out sets")  # fmt: skip
        spec = get_spec(name)
        try:
            ood = load_dataset(name, "test", root, download=False)
        except UserError:  # not here: compare what the registry knows without the files
            names = spec.classnames() if callable(spec.classnames) else spec.classnames
            shared, files = aux_classes & {c.lower() for c in names or []}, set()
        else:
            shared, files = aux_classes & {c.lower() for c in ood.classnames or []}, aux_files & _files(ood)
        if shared:
            raise UserError(
                f"--aux {aux.name} shares classes with the OOD test set {name}: {', '.join(sorted(shared)[:10])}"
            )
        if files:
            raise UserError(f"--aux {aux.name} shares {len(files)} image files with the OOD test set {name}, "
                            f"e.g. {sorted(files)[0]}")  # fmt: skip
