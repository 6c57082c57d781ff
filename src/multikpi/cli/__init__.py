"""The `multikpi` command line.

The command owns its process, so it sets up memory here, before anything imports pyarrow or torch
(measured on the 1M-row feed benchmark, peak resident memory of `train`):

- Arrow's allocator: `ARROW_DEFAULT_MEMORY_POOL` is read once, when pyarrow loads, and
  `pyarrow.set_memory_pool` later changes only the pool Python-level calls default to, not the one
  Arrow's C++ code (the Parquet decoder among it) allocates from. jemalloc hands freed pages back
  (with `cli.main`'s decay of 0); mimalloc, the wheel's default, kept about 70 MB of decoded Parquet
  pages resident after the data was encoded (650-700 MB -> 580 MB after loading).
- glibc's malloc arenas: at most 2 (glibc's default is 8 per core). Each torch and Arrow worker
  thread otherwise gets an arena of its own, and every arena keeps the pages its thread's
  temporaries freed: 855 MB -> 812 MB (1 arena: 803 MB), with no change in training speed.

And it makes MKL's matrix products bitwise reproducible: `MKL_CBWR=AUTO,STRICT` (MKL's conditional
numerical reproducibility, read when MKL initializes). Without it MKL's sgemm picks kernels by the
operands' memory alignment, so the same product can differ in the last bit between two processes
(measured: 48 of 384 shape/alignment combinations, e.g. (25 x 16) @ (16 x 8)); a `--resume`d
two-process run then drifted from the uninterrupted one by 1e-7. No measurable speed cost here.

A value the user set in the environment is kept.
"""
import ctypes
import os
import platform
import sys

M_ARENA_MAX = -8  # glibc's malloc.h

if sys.platform == "linux" and "pyarrow" not in sys.modules:  # Linux wheels of pyarrow ship jemalloc
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
if "MALLOC_ARENA_MAX" not in os.environ and platform.libc_ver()[0] == "glibc":
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # no glibc to tune
        pass
