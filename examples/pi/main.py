"""Monte Carlo estimate of pi, written for DCP's Pyodide worktime (runs unchanged on Tessera).

Each slice is a random seed; it throws `samples` darts at the unit square and returns how many
land inside the quarter circle. `samples` comes from the job's static argument (sys.argv[1]);
the sampling code lives in the job's bundle (montecarlo.py).
"""
import sys

import dcp
from montecarlo import hits_in_quarter_circle

samples = int(sys.argv[1])
print(f"pi job ready: {samples} samples per slice")


def slice_handler(seed):
    dcp.progress(0.0)
    hits = hits_in_quarter_circle(seed, samples)
    dcp.progress(1.0)
    return {"seed": seed, "hits": hits, "samples": samples}


dcp.set_slice_handler(slice_handler)
