"""CDR Policy Operator: Qualys CDR detections and threat-intel feeds to Tetragon and Cilium policies."""

import os

__version__ = "0.1.0"

# numpy's OpenBLAS starts one thread per CPU when numpy is imported, and those threads spin on the
# CPU they share with the import: 30-100 ms of a cold start (more on a Lambda's CPU share), for
# BLAS routines nothing in this package calls. Set before any module of the package imports numpy;
# a value the environment already gives is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
