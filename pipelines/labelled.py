"""The labelled subset of a semi-supervised run: which training images keep their label.

`select` draws `per_class` images of every class with a seeded generator, so the same
seed gives the same subset on every host and on resume; `record` is what the workdir's
`labelled.json` holds, so a run says exactly which images it was taught with.
"""

from __future__ import annotations

import numpy as np

from pipelines.data import DataError


def select(labels: np.ndarray, per_class: int, num_classes: int, seed: int) -> np.ndarray:
    """Indices of `per_class` examples of each of `num_classes` classes, drawn by `seed`.

    Args:
        labels: (N,) the split's labels in stored order.
        per_class: examples kept per class.
        num_classes: K; every class 0..K-1 must have `per_class` examples.
        seed: seeds the draw (NumPy's PCG64).

    Returns:
        (K * per_class,) sorted int64 indices into `labels`.

    Raises:
        DataError: a class has fewer than `per_class` examples.

    Example:
        >>> select(np.array([0, 1, 0, 1, 1]), 1, 2, seed=0)  # e.g. array([0, 3])
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(num_classes):
        pool = np.flatnonzero(labels == label)
        if len(pool) < per_class:
            raise DataError(f"data.labelled_per_class={per_class} but class {label} has only "
                            f"{len(pool)} training examples; choose a smaller number")
        chosen.append(rng.choice(pool, per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def mask(count: int, indices: np.ndarray) -> np.ndarray:
    """The boolean mask of `indices` over `count` examples: (count,)."""
    out = np.zeros(count, bool)
    out[indices] = True
    return out


def record(indices: np.ndarray, labels: np.ndarray, *, split: str, per_class: int, seed: int) -> dict:
    """The JSON record of a labelled subset: how it was drawn, and every index with its label."""
    chosen = labels[indices]
    return {
        "split": split,
        "per_class": per_class,
        "seed": seed,
        "count": int(len(indices)),
        "class_counts": {str(k): int(v) for k, v in zip(*np.unique(chosen, return_counts=True))},
        "indices": [int(i) for i in indices],
        "labels": [int(v) for v in chosen],
    }
