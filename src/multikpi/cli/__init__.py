"""The `multikpi` command line.

The command owns its process, so it picks Arrow's allocator here, before anything imports pyarrow:
`ARROW_DEFAULT_MEMORY_POOL` is read once, when pyarrow loads, and `pyarrow.set_memory_pool` later
changes only the pool that Python-level calls default to, not the one Arrow's C++ code (the
Parquet decoder among it) allocates from. jemalloc hands freed pages back (with `cli.main`'s decay
of 0); mimalloc, the wheel's default, kept about 70 MB of decoded Parquet pages resident after the
1M-row benchmark's data was encoded (650-700 MB -> 580 MB). A value the user set is kept.
"""
import os
import sys

if sys.platform == "linux" and "pyarrow" not in sys.modules:  # Linux wheels of pyarrow ship jemalloc
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
