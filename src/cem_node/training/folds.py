"""Patient-level K-fold cross-validation: which patients each fold holds out.

:func:`assign_folds` puts every patient of a dataset in exactly one of ``k``
folds, seeded and pure (the result depends only on the patient ids, their
labels, ``k`` and the seed). :func:`fold_split` turns fold ``i`` into a
:class:`~cem_node.training.datasets.DatasetSplit` (train: the other folds,
val: fold ``i``, test: empty), and :func:`fold_split_document` into the
``split.json`` a training writes, so every tool that reads a split file
(``--split-file F --split val``, ``train radiomics``, ``operating-point``)
works on one fold. :class:`FoldsRecord` is ``folds.json``, the description of
a cross-validation folder (``DIR/fold-1`` ... ``DIR/fold-K``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cem_node.training import run_files
from cem_node.training.datasets import DatasetError, DatasetSplit

if TYPE_CHECKING:
    from cem_node.training.datasets import Sample, TrainingDataset

__all__ = [
    "FoldsRecord",
    "assign_folds",
    "fold_dir_name",
    "fold_split",
    "fold_split_document",
    "read_folds",
]

FOLDS_FORMAT = "cem-node-folds/1"
#: Severity order of the patient strata (a patient's most severe image label).
_SEVERITY = {"normal": 0, "benign": 1, "malignant": 2}


def fold_dir_name(fold: int) -> str:
    """The folder of fold ``fold`` (1-based) inside a cross-validation folder."""
    return f"fold-{fold}"


def _samples(dataset: TrainingDataset | Sequence[Sample]) -> list[Sample]:
    return list(getattr(dataset, "samples", dataset))


def assign_folds(
    dataset: TrainingDataset | Sequence[Sample], k: int, seed: int = 0
) -> list[list[str]]:
    """Divide the patients into ``k`` folds; return the sorted patient ids of each fold.

    Patients are grouped into strata by their most severe image label
    (malignant, benign, normal), shuffled within each stratum with
    ``numpy.random.default_rng(seed)``, and dealt to the folds one by one,
    the deal continuing across the strata (malignant first), so the fold
    sizes differ by at most one patient and each fold holds about the same
    share of every stratum.

    Parameters
    ----------
    dataset
        The samples (or a dataset); only their patient ids and labels are used.
    k
        Number of folds, at least 2 and at most the number of patients.
    seed
        Seed of the shuffle.

    Raises
    ------
    DatasetError
        When ``k`` is below 2 or above the number of patients.
    """
    samples = _samples(dataset)
    worst: dict[str, int] = defaultdict(int)
    for sample in samples:
        worst[sample.patient_id] = max(worst[sample.patient_id], _SEVERITY.get(sample.label, 0))
    if k < 2:
        raise DatasetError(f"cross-validation needs at least 2 folds, got {k}")
    if k > len(worst):
        raise DatasetError(f"{k} folds need at least {k} patients; the dataset has {len(worst)}")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    dealt = 0
    for severity in sorted(set(_SEVERITY.values()), reverse=True):
        stratum = sorted(p for p, s in worst.items() if s == severity)
        for index in rng.permutation(len(stratum)):
            folds[dealt % k].append(stratum[int(index)])
            dealt += 1
    return [sorted(fold) for fold in folds]


def fold_split(
    dataset: TrainingDataset | Sequence[Sample],
    folds: Sequence[Sequence[str]],
    fold: int,
    seed: int,
) -> DatasetSplit:
    """The split of fold ``fold`` (1-based): val = its patients, train = the other folds.

    Raises
    ------
    DatasetError
        When ``fold`` is not in 1..K, or the folds do not cover the dataset's
        patients exactly once.
    """
    k = len(folds)
    if not 1 <= fold <= k:
        raise DatasetError(f"fold {fold} does not exist: the folds are 1 to {k}")
    samples = _samples(dataset)
    owner: dict[str, int] = {}
    for number, members in enumerate(folds, start=1):
        for patient in members:
            if patient in owner:
                raise DatasetError(f"patient {patient} is in folds {owner[patient]} and {number}")
            owner[patient] = number
    unassigned = sorted({s.patient_id for s in samples} - set(owner))
    if unassigned:
        raise DatasetError(
            f"{len(unassigned)} patient(s) of the dataset are in no fold (e.g. {unassigned[0]}): "
            "the folds were made from another dataset"
        )
    return DatasetSplit(
        train=[s for s in samples if owner[s.patient_id] != fold],
        val=[s for s in samples if owner[s.patient_id] == fold],
        test=[],
        seed=seed,
        fractions=((k - 1) / k, 1 / k, 0.0),
    )


def fold_split_document(
    split: DatasetSplit, datasets: Sequence[str], fold: int, k: int
) -> dict[str, Any]:
    """``split.json`` of one fold: the format a training writes, plus the fold's number."""
    return {"datasets": list(datasets), **split.as_dict(), "fold": fold, "folds": k}


class FoldsRecord(BaseModel):
    """``folds.json``: the folds of a cross-validation folder.

    Attributes
    ----------
    k, seed
        Number of folds and the seed of :func:`assign_folds`.
    datasets
        The dataset SPECs the folds were made from.
    patients
        The patient ids held out by each fold (fold ``i`` is ``patients[i - 1]``).
    images
        Image pairs per fold (its held-out images).
    fold_dirs
        The folders of the folds' training runs, relative to the folder of ``folds.json``.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    format: str = FOLDS_FORMAT
    k: int = Field(ge=2)
    seed: int = Field(ge=0)
    datasets: list[str]
    patients: list[list[str]]
    images: list[int]
    fold_dirs: list[str]

    @model_validator(mode="after")
    def _consistent(self) -> FoldsRecord:
        if not len(self.patients) == len(self.images) == len(self.fold_dirs) == self.k:
            raise ValueError(f"patients, images and fold_dirs must each list {self.k} folds")
        seen = [p for fold in self.patients for p in fold]
        if len(seen) != len(set(seen)):
            raise ValueError("a patient is in more than one fold")
        return self

    @classmethod
    def build(
        cls,
        dataset: TrainingDataset | Sequence[Sample],
        datasets: Sequence[str],
        k: int,
        seed: int,
    ) -> FoldsRecord:
        """The folds of ``dataset`` (:func:`assign_folds`) as a record."""
        samples = _samples(dataset)
        folds = assign_folds(samples, k, seed)
        owner = {p: i for i, fold in enumerate(folds) for p in fold}
        images = [0] * k
        for sample in samples:
            images[owner[sample.patient_id]] += 1
        return cls(
            k=k,
            seed=seed,
            datasets=list(datasets),
            patients=folds,
            images=images,
            fold_dirs=[fold_dir_name(i) for i in range(1, k + 1)],
        )

    def write(self, folder: Path) -> Path:
        """Write ``folder/folds.json``; return its path."""
        path = Path(folder) / run_files.FOLDS
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    def same_folds(self, other: FoldsRecord) -> bool:
        """Whether both records hold out the same patients in the same folds."""
        return (self.k, self.seed, self.patients) == (other.k, other.seed, other.patients)


def read_folds(folder: Path) -> FoldsRecord:
    """``folder/folds.json`` (written by ``cem-node train detector --folds K``).

    Raises
    ------
    DatasetError
        When the file is missing or invalid.
    """
    path = Path(folder) / run_files.FOLDS
    if not path.is_file():
        raise DatasetError(
            f"{path}: missing: give the --out folder of 'cem-node train detector --folds K'"
        )
    try:
        return FoldsRecord.model_validate_json(path.read_text())
    except (OSError, ValidationError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
