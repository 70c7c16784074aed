"""Out-of-fold NAB scores: leave one category out.

A corpus-optimised threshold is chosen knowing every label it is scored on, so its NAB
score is in-sample: an upper bound on what a deployment that must fix its threshold in
advance gets. Leave-one-category-out asks the deployment's question instead. For each
category c, each profile's threshold is the one that maximises the raw score of the OTHER
categories' files (the same optimiser, :func:`score_corpus`); c's files are then scored at
it. The held-out raw scores of all folds add up to one raw score per profile, normalised
over the whole corpus (perfect and null over all its scored windows), so the out-of-fold
score is on the same scale as the in-sample one and equal to it when every fold happens to
choose the in-sample threshold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy.typing as npt

from detector.evaluate.nab_scoring import (
    PROFILES,
    FileScore,
    Profile,
    ProfileResult,
    Window,
    normalise,
    score_corpus,
    score_corpus_at_threshold,
)

_ALL_PROFILES: Final = tuple(PROFILES.values())


@dataclass(frozen=True)
class OutOfFold:
    """One profile's out-of-fold score over the whole corpus, and each fold's part of it."""

    profile: Profile
    # held-out category -> its files scored at the threshold chosen on the other categories
    folds: Mapping[str, ProfileResult]
    raw_score: float
    normalised_score: float  # NaN when the corpus has no scored window
    n_windows: int
    tp_windows: int
    fn_windows: int
    fp_detections: int

    @property
    def thresholds(self) -> dict[str, float]:
        """Held-out category -> the threshold its files were scored at."""
        return {c: r.threshold for c, r in self.folds.items()}

    @property
    def per_file(self) -> dict[str, FileScore]:
        return {name: fs for r in self.folds.values() for name, fs in r.per_file.items()}


def out_of_fold(
    scores: Mapping[str, npt.ArrayLike],
    windows: Mapping[str, Sequence[Window]],
    category: Mapping[str, str],
    profiles: Iterable[Profile] = _ALL_PROFILES,
) -> dict[str, OutOfFold]:
    """Leave-one-category-out scores per profile (module docstring).

    ``scores`` and ``windows`` are keyed by file name, as for :func:`score_corpus`;
    ``category`` maps every file name to its category. Needs at least two categories.
    """
    chosen = tuple(profiles)
    missing = sorted(scores.keys() - category.keys())
    if missing:
        raise ValueError(f"no category for {missing[:5]} ({len(missing)} files)")
    members: dict[str, list[str]] = {}
    for name in scores:
        members.setdefault(category[name], []).append(name)
    if len(members) < 2:
        raise ValueError(
            f"leaving one category out needs at least two categories, got {sorted(members)}"
        )
    folds: dict[str, dict[str, ProfileResult]] = {p.name: {} for p in chosen}
    for held_out, names in sorted(members.items()):
        rest = [n for n in scores if category[n] != held_out]
        fitted = score_corpus({n: scores[n] for n in rest}, {n: windows[n] for n in rest}, chosen)
        held_scores = {n: scores[n] for n in names}
        held_windows = {n: windows[n] for n in names}
        for p in chosen:
            folds[p.name][held_out] = score_corpus_at_threshold(
                held_scores, held_windows, p, fitted[p.name].threshold
            )
    return {p.name: _combine(p, folds[p.name]) for p in chosen}


def _combine(profile: Profile, folds: Mapping[str, ProfileResult]) -> OutOfFold:
    raw = math.fsum(r.raw_score for r in folds.values())
    n_windows = sum(r.n_windows for r in folds.values())
    return OutOfFold(
        profile=profile,
        folds=MappingProxyType(dict(folds)),
        raw_score=raw,
        normalised_score=normalise(raw, n_windows, profile),
        n_windows=n_windows,
        tp_windows=sum(r.tp_windows for r in folds.values()),
        fn_windows=sum(r.fn_windows for r in folds.values()),
        fp_detections=sum(r.fp_detections for r in folds.values()),
    )
