"""Comparisons for values that hold numpy arrays (dtype and shape must match, not just values)."""
from __future__ import annotations

from typing import Any

import numpy as np


def same(left: Any, right: Any) -> bool:
    """Deep equality in which numpy arrays and scalars must also agree in type, dtype and shape."""
    if isinstance(left, (np.ndarray, np.generic)) or isinstance(right, (np.ndarray, np.generic)):
        return (
            type(left) is type(right)
            and left.dtype == right.dtype
            and np.shape(left) == np.shape(right)
            and np.array_equal(left, right)
        )
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(same(left[key], right[key]) for key in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(same(a, b) for a, b in zip(left, right))
    return type(left) is type(right) and left == right
