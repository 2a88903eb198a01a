"""Polars' allocator told to keep the pages a batch command frees, for reuse, instead of handing them back.

Polars allocates with jemalloc and sets it to give freed pages back to the kernel after half a second
(`dirty_decay_ms:500,muzzy_decay_ms:1000`, polars/__init__.py; settings in `_RJEM_MALLOC_CONF` come after its own
and override them). A close or a settle allocates and frees gigabytes of frames in a few seconds, so the same memory
is handed back and faulted in again and again: on this project's 2-core VM the holders epoch of issue 17 spent ~2 s
of its ~9 s of CPU in the kernel. With freed pages kept for 30 s (`dirty_decay_ms`, `muzzy_decay_ms`), three rounds
of close + tree build took 6.07 s at the median against 6.80 s (a million token holders), and 2.92 s against 3.10 s
(the same epoch paying one address): benchmarks/RESULTS.md.

jemalloc reads its settings once, at its first allocation, so this runs before polars is imported (`royalty`'s
package import). Not for `royalty ingest`, a service whose memory should go back down between bursts. An operator's
own `_RJEM_MALLOC_CONF` is kept. It is set in this process's environment, so processes it starts inherit it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

polars_allocator_variable = "_RJEM_MALLOC_CONF"  # tikv-jemallocator's MALLOC_CONF, read by polars' allocator
batch_allocator_settings = "dirty_decay_ms:30000,muzzy_decay_ms:30000"
services = frozenset({"ingest"})


def keep_freed_pages(argv: Sequence[str]) -> None:
    """Set polars' allocator to keep freed pages for a batch command (`argv` names no service), unless set already."""
    if services.isdisjoint(argv[1:]):
        os.environ.setdefault(polars_allocator_variable, batch_allocator_settings)
