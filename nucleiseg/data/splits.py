"""Deterministic train/val/test splits: by item or by group (slide, patient), and split files.

A split file is a CSV of ``name,split`` rows; every run writes the one it used into its run
directory (``split.csv``) so the same split can be reused with ``dataset.split_file=...``.
"""

from __future__ import annotations

import csv
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nucleiseg.data.io import DatasetError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def scale_sizes(sizes: Sequence[int], total: int) -> list[int]:
    """Split sizes for ``total`` items: ``sizes`` as given when they add up, else in proportion."""
    if len(sizes) != 3 or min(sizes) < 0:
        raise DatasetError(f"split sizes must be three non-negative numbers, got {list(sizes)}")
    if sum(sizes) == total:
        return list(sizes)
    if total < 3:
        raise DatasetError(f"{total} item(s) cannot be split into train/val/test")
    fractions = np.asarray(sizes, dtype=float) / sum(sizes)
    val = max(1, round(fractions[1] * total))
    test = max(1, round(fractions[2] * total))
    scaled = [total - val - test, val, test]
    log.info("split sizes %s scaled to %s for %d items", list(sizes), scaled, total)
    return scaled


def random_split(names: Sequence[str], sizes: Sequence[int], seed: int) -> dict[str, str]:
    """Shuffle ``names`` with ``seed`` and cut them into train/val/test of the given sizes."""
    train, val, test = scale_sizes(sizes, len(names))
    order = np.random.default_rng(seed).permutation(len(names))
    labels = ["train"] * train + ["val"] * val + ["test"] * test
    return {names[i]: labels[rank] for rank, i in enumerate(order)}


def group_split(
    names: Sequence[str], groups: Sequence[str], sizes: Sequence[int], seed: int
) -> dict[str, str]:
    """Assign whole groups to splits, as close to ``sizes`` as groups allow (no leakage)."""
    _, val_size, test_size = scale_sizes(sizes, len(names))
    counts: dict[str, int] = {}
    for group in groups:
        counts[group] = counts.get(group, 0) + 1
    if len(counts) < 3:
        raise DatasetError(f"a group split needs at least 3 groups, found {len(counts)}")
    rng = np.random.default_rng(seed)
    order = [list(counts)[i] for i in rng.permutation(len(counts))]
    test_groups = _choose_groups(order, counts, test_size, rng)
    rest = [g for g in order if g not in test_groups]
    val_groups = _choose_groups(rest[:-1] if len(rest) > 1 else rest, counts, val_size, rng)
    split_of = {
        g: "test" if g in test_groups else "val" if g in val_groups else "train" for g in order
    }
    return {name: split_of[group] for name, group in zip(names, groups, strict=True)}


def _choose_groups(
    groups: list[str], counts: dict[str, int], target: int, rng: np.random.Generator
) -> set[str]:
    """Groups whose item count is closest to ``target`` (exhaustive for few groups)."""
    if len(groups) <= 16:
        best: list[tuple[int, ...]] = []
        best_gap = None
        for r in range(1, len(groups)):
            for combo in itertools.combinations(range(len(groups)), r):
                gap = abs(sum(counts[groups[i]] for i in combo) - target)
                if best_gap is None or gap < best_gap:
                    best, best_gap = [combo], gap
                elif gap == best_gap:
                    best.append(combo)
        chosen = best[rng.integers(len(best))]
        return {groups[i] for i in chosen}
    chosen, total = set(), 0
    for group in groups:  # already shuffled: greedy fill
        if total >= target:
            break
        chosen.add(group)
        total += counts[group]
    return chosen


def stratified_draw(values: dict[str, float], count: int, seed: int) -> set[str]:
    """``count`` keys of ``values`` that span its range: the keys sorted by value, cut into
    ``count`` consecutive strata of (nearly) equal size, one key drawn from each with
    ``seed``. A random draw of a few groups can land in one tail (CoNSeP: 4 of 5 validation
    images among its 6 sparsest); a stratified one keeps each part of the range."""
    if not 0 < count <= len(values):
        raise DatasetError(f"cannot draw {count} of {len(values)} groups")
    ordered = sorted(values, key=lambda key: (values[key], key))
    rng = np.random.default_rng(seed)
    return {str(rng.choice(stratum)) for stratum in np.array_split(np.array(ordered), count)}


def read_split_file(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split file '{path}' does not exist; set dataset.split_file=null")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"name", "split"} <= set(reader.fieldnames):
            raise DatasetError(f"split file '{path}' needs a header with columns name,split")
        assignment = {row["name"]: row["split"].strip() for row in reader}
    bad = {s for s in assignment.values() if s not in SPLITS}
    if bad:
        raise DatasetError(f"split file '{path}' has unknown split(s) {sorted(bad)}; use {SPLITS}")
    return assignment


def write_split_file(path: str | Path, assignment: dict[str, str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "split"])
        writer.writerows(sorted(assignment.items(), key=lambda kv: (SPLITS.index(kv[1]), kv[0])))
    tmp.replace(path)


def apply_split_file(names: Sequence[str], assignment: dict[str, str], path: str) -> dict[str, str]:
    """Check that a split file covers exactly the dataset's items."""
    missing = [n for n in names if n not in assignment]
    if missing:
        raise DatasetError(
            f"split file '{path}' has no row for {len(missing)} item(s), e.g. {missing[:3]}; "
            "it was written for another dataset"
        )
    return {n: assignment[n] for n in names}


def assign_splits(
    names: Sequence[str],
    groups: Sequence[str],
    sizes: Sequence[int],
    seed: int,
    by_group: bool,
    split_file: str | None = None,
) -> dict[str, str]:
    """The split of every item: from ``split_file`` if given, else by item or by group."""
    if split_file:
        return apply_split_file(names, read_split_file(split_file), split_file)
    if by_group:
        return group_split(names, groups, sizes, seed)
    return random_split(names, sizes, seed)
