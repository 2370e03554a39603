"""A deterministic, allocation-heavy workload measured by leakprof and by
tracemalloc in the same process (tests/python_counts.rs).

The workload builds strings, bytes (small ones in pymalloc, large ones
through to the RAW domain), tuples, dicts and lists it keeps, and
temporaries it drops, inside ``leakprof.tag(task="counted")``. The
collector is off and nothing made before the window is freed in it, so
the bytes still live at its end are exactly what the workload allocated
and kept: tracemalloc's traced memory grows by that much, and leakprof's
live bytes tagged "counted" are that much.

Environment: LEAKPROF_TEST_ITEMS (default 15000) and
LEAKPROF_TEST_TRACEMALLOC_FRAMES: when set, the script starts tracemalloc
itself with that many frames (on top of leakprof's allocator hooks);
otherwise tracemalloc must already be tracing (PYTHONTRACEMALLOC, which
starts it before leakprof's hooks, so they wrap it).

Prints ``tracemalloc <bytes> <blocks>``: the growth of the traced memory
and of the number of traced blocks over the window.
"""

import gc
import os
import tracemalloc

import leakprof

gc.disable()

ITEMS = int(os.environ.get("LEAKPROF_TEST_ITEMS", "15000"))
FRAMES = os.environ.get("LEAKPROF_TEST_TRACEMALLOC_FRAMES")


def workload(items: int) -> list:
    kept = []
    for i in range(items):
        text = f"item-{i}-" * (i % 7 + 1)
        small = bytes(i % 200) + text.encode()
        large = b"z" * (600 + (i * 37) % 3000)
        record = {"i": i * 1000, "text": text, "small": small}
        numbers = [i * 1000 + j for j in range(i % 30)]
        scratch = [str(j) * 3 for j in range(i % 20)]  # dropped each round
        scratch.append(text.upper())
        kept.append((record, numbers, large, len(scratch)))
    return kept


def traced_blocks() -> int:
    # tracemalloc's own list of traces; built and dropped outside the window.
    return len(tracemalloc._get_traces())


if FRAMES is not None:
    tracemalloc.start(int(FRAMES))
assert tracemalloc.is_tracing(), "tracemalloc is not tracing"

warm = workload(200)  # first-use allocations (interned names, caches) happen here
blocks_before = traced_blocks()
before = tracemalloc.get_traced_memory()[0]
with leakprof.tag(task="counted"):
    kept = workload(ITEMS)
after = tracemalloc.get_traced_memory()[0]
blocks_after = traced_blocks()
print(f"tracemalloc {after - before} {blocks_after - blocks_before}", flush=True)
