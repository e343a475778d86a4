"""One-to-one point matching, shared by every readout's validation and quality checks.

:func:`match_points` pairs detected with true points (or spikes with detections) within a
distance, minimising the summed distance (Hungarian assignment on the sparse candidate
pairs only).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

__all__ = ["PointMatch", "match_points", "resolvable_count"]

class _Match(NamedTuple):
    pairs: np.ndarray
    precision: float
    recall: float
    f1: float


class PointMatch(_Match):
    """Result of :func:`match_points`: unpacks as ``(pairs, precision, recall, f1)``.

    Also has ``distances`` (of the matched pairs), ``tp``, ``fp``, ``fn``, and
    ``match["name"]`` item access to every field.
    """

    distances: np.ndarray
    tp: int
    fp: int
    fn: int

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return getattr(self, key)
        return super().__getitem__(key)


def match_points(pred: np.ndarray, true: np.ndarray, max_distance: float) -> PointMatch:
    """One-to-one matching of detected to true points within ``max_distance`` (Hungarian).

    The assignment minimises the summed distance over all pairs closer than
    ``max_distance`` (:func:`scipy.optimize.linear_sum_assignment`).

    Parameters
    ----------
    pred, true : array_like
        (n, d) coordinates (same units as ``max_distance``).
    max_distance : float
        Largest distance of a match.

    Returns
    -------
    PointMatch
        ``pairs`` (k, 2: index into ``pred``, index into ``true``), ``precision``,
        ``recall``, ``f1`` (1.0 for empty sets), and ``distances``, ``tp``, ``fp``, ``fn``.

    Examples
    --------
    >>> pairs, precision, recall, f1 = match_points([[0, 0], [5, 5]], [[0.1, 0], [9, 9]], 1.0)
    >>> pairs.tolist(), precision, recall
    ([[0, 0]], 0.5, 0.5)
    """
    pred = np.asarray(pred, float)
    true = np.asarray(true, float)
    dim = pred.shape[-1] if pred.size else (true.shape[-1] if true.size else 2)
    pred, true = pred.reshape(-1, dim), true.reshape(-1, dim)
    pairs = np.empty((0, 2), np.int64)
    dist = np.empty(0)
    if len(pred) and len(true):
        sparse = cKDTree(pred).sparse_distance_matrix(cKDTree(true), max_distance, output_type="coo_matrix")
        if sparse.nnz:
            # only rows and columns with a candidate partner enter the assignment
            rows, ri = np.unique(sparse.row, return_inverse=True)
            cols, ci = np.unique(sparse.col, return_inverse=True)
            big = max_distance * (len(rows) + len(cols) + 1) + 1.0
            cost = np.full((len(rows), len(cols)), big)
            cost[ri, ci] = sparse.data
            r, c = linear_sum_assignment(cost)
            ok = cost[r, c] <= max_distance
            pairs = np.column_stack([rows[r[ok]], cols[c[ok]]]).astype(np.int64)
            dist = np.linalg.norm(pred[pairs[:, 0]] - true[pairs[:, 1]], axis=1)
    tp = len(pairs)
    fp, fn = len(pred) - tp, len(true) - tp
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = PointMatch(pairs, float(precision), float(recall), float(f1))
    out.distances, out.tp, out.fp, out.fn = dist, tp, fp, fn
    return out


def resolvable_count(true: np.ndarray, min_separation: float) -> int:
    """How many of ``true`` points a detector that cannot separate points closer than
    ``min_separation`` can find at most: the number of groups of points linked by distances
    below it (single linkage), one detection per group.

    Two equal Gaussian spots of SD ``s`` show two maxima only when they are more than ``2 s``
    apart (the Sparrow limit), so ``resolvable_count(true, 2 * s) / len(true)`` is the recall
    ceiling of a detector that reads maxima; it can be passed only by fitting several spots to
    one blob.

    Parameters
    ----------
    true : array_like
        (n, d) coordinates.
    min_separation : float
        Closest separation that is resolved (same units).

    Returns
    -------
    int

    Examples
    --------
    >>> resolvable_count([[0, 0], [0, 1], [0, 2.5], [9, 9]], 1.2)
    3
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    true = np.asarray(true, float)
    n = len(true)
    if n == 0:
        return 0
    pairs = cKDTree(true.reshape(n, -1)).query_pairs(min_separation, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])
