"""The allocation-heavy workload of tools/bench-python: pure Python that
builds and drops dicts, strings, lists and bytes (small ones in pymalloc,
some over 512 bytes that go on to the RAW domain), called 20 frames deep
as a worker's code is. Deterministic: the same allocations every run.

Prints one JSON line: {"workload_s": seconds the workload took}.

Usage: python tools/bench_python_alloc.py [BATCHES]
"""

import json
import sys
import time

DEPTH = 20
ITEMS = 20_000


def batch(seed: int) -> int:
    made = []
    for i in range(ITEMS):
        text = f"row-{seed}-{i}" * (i % 5 + 1)
        made.append({"i": i, "text": text, "parts": text.split("-"), "raw": b"y" * ((i * 37) % 1500)})
    return len(made)


def nested(depth: int, seed: int) -> int:
    return batch(seed) if depth <= 1 else nested(depth - 1, seed)


def main() -> None:
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    start = time.perf_counter()
    done = sum(nested(DEPTH, seed) for seed in range(batches))
    elapsed = time.perf_counter() - start
    assert done == batches * ITEMS
    print(json.dumps({"workload_s": elapsed}), flush=True)


if __name__ == "__main__":
    main()
