"""Synthetic chest radiographs with EHR, projected from one real chest CT, written in the MIMIC layout."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from diff3m.models.data.phantoms.anatomy import load_anatomy
from diff3m.models.data.phantoms.cases import DESIGNS, STANDARD, HeartDesign, PhantomCase, make_case
from diff3m.models.data.phantoms.mimic_writer import study_rows, write_image, write_tables
from diff3m.models.data.phantoms.render import render

__all__ = ["PhantomSet", "assign_split", "generate_dataset", "make_cases"]

DEFAULT_SPLIT = (0.7, 0.1, 0.2)


@dataclass(frozen=True)
class PhantomSet:
    """What ``generate_dataset`` wrote."""

    root: Path
    cases: tuple[PhantomCase, ...]
    seed: int = 0
    size: int = 128
    design: HeartDesign = STANDARD

    @classmethod
    def read(cls, root: Path) -> PhantomSet:
        """A written folder's cases, rebuilt from its ``phantoms.json`` (FileNotFoundError without one).

        Folders written before designs existed are ``standard``.
        """
        m = json.loads((Path(root) / "phantoms.json").read_text())
        design = DESIGNS[m.get("design", {}).get("name", "standard")]
        fractions = tuple(m["split_fractions"])
        cases = make_cases(m["n_normal"], m["n_abnormal"], m["seed"], fractions, design.name)
        return cls(Path(root), tuple(cases), int(m["seed"]), int(m["size"]), design)

    def count(self, split: str | None = None, normal: bool | None = None) -> int:
        """Number of cases in ``split`` (all if None) that are normal / abnormal (both if None)."""
        return sum(
            1
            for c in self.cases
            if (split is None or c.split == split) and (normal is None or c.normal == normal)
        )


def assign_split(seed: int, index: int, abnormal: bool, fractions: tuple[float, float, float]) -> str:
    """Split of case ``index``: normals by ``fractions`` (train, validate, test); abnormals never train.

    Training is one-class (normals only), so abnormal cases go to validate / test in the ratio of
    those two fractions (to train when both are zero).
    """
    f_train, f_val, f_test = fractions
    u = float(np.random.default_rng([seed, index, 11]).random())
    if abnormal:
        if f_val + f_test <= 0:
            return "train"
        return "validate" if u < f_val / (f_val + f_test) else "test"
    total = f_train + f_val + f_test
    if u < f_train / total:
        return "train"
    return "validate" if u < (f_train + f_val) / total else "test"


def make_cases(
    n_normal: int,
    n_abnormal: int,
    seed: int,
    fractions: tuple[float, float, float] = DEFAULT_SPLIT,
    design: str = "standard",
) -> list[PhantomCase]:
    """The cases of a dataset: indices 0..n_normal-1 normal, then the abnormal ones."""
    if design not in DESIGNS:
        raise ValueError(f"unknown phantom design {design!r}; choose one of {sorted(DESIGNS)}")
    anatomy = load_anatomy()
    cases = []
    for i in range(n_normal + n_abnormal):
        abnormal = i >= n_normal
        split = assign_split(seed, i, abnormal, fractions)
        cases.append(make_case(seed, i, abnormal, split, anatomy, DESIGNS[design]))
    return cases


def generate_dataset(
    out: Path,
    n_normal: int,
    n_abnormal: int,
    size: int = 128,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_SPLIT,
    progress: bool = True,
    design: str = "standard",
) -> PhantomSet:
    """Render and write a phantom dataset in the MIMIC-CXR-JPG + MIMIC-IV layout under ``out``."""
    if n_normal < 0 or n_abnormal < 0 or n_normal + n_abnormal == 0:
        raise ValueError("need at least one case (normal and abnormal counts must be >= 0)")
    if not 16 <= size <= 1024:
        raise ValueError(f"size must be 16..1024 pixels, got {size}")
    if any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be >= 0 and not all zero, got {fractions}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = make_cases(n_normal, n_abnormal, seed, fractions, design)
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one image is a small job: extra threads only spin on a shared CPU
    try:
        for case in tqdm(cases, desc="phantoms", unit="img", disable=not progress):
            write_image(out, case, render(case, size, seed).image)
            rows.append(study_rows(case, seed, size))
    finally:
        torch.set_num_threads(threads)
    write_tables(out, rows)
    manifest = {
        "generator": "diff3m phantoms",
        "seed": seed,
        "size": size,
        "n_normal": n_normal,
        "n_abnormal": n_abnormal,
        "split_fractions": list(fractions),
        "design": asdict(DESIGNS[design]),
        "cases": [asdict(c) for c in cases],
    }
    (out / "phantoms.json").write_text(json.dumps(manifest, indent=1))
    return PhantomSet(out, tuple(cases), seed, size, DESIGNS[design])
