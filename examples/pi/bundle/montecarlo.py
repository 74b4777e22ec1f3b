"""Sampling helpers shipped in the pi job's bundle."""
import numpy as np


def hits_in_quarter_circle(seed, samples):
    """How many of `samples` uniform points in [0, 1)² fall inside the unit quarter circle."""
    rng = np.random.default_rng(seed)
    points = rng.random((samples, 2))
    return int(np.count_nonzero((points ** 2).sum(axis=1) <= 1.0))
