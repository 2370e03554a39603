"""The Dramatiq workload of tools/bench-python: no-op messages over Redis.

Enqueues MESSAGES messages of a no-op actor on the Redis at REDIS_URL
(its queue flushed first), then runs a Dramatiq worker (one process,
THREADS worker threads) until all are processed. Prints one JSON line:

  msgs_per_s   messages processed per second, from the worker's start to
               the last message's end (enqueueing is outside)
  p99_ms       99th percentile of a message's time in the worker: from the
               first middleware's before_process_message to the last
               middleware's after_process_message (the actor, every
               middleware's hooks, the tagging leakprof adds among them)

Usage: python tools/bench_python_dramatiq.py REDIS_URL MESSAGES THREADS
"""

import json
import sys
import threading
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker


class Timing(dramatiq.Middleware):  # type: ignore[misc]
    """First in the chain: its before hook runs first and its after hook
    last (Dramatiq calls the after hooks in reverse)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.started: dict[str, float] = {}
        self.spans: list[float] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.last = 0.0

    def before_process_message(self, broker: Any, message: Any) -> None:
        self.started[message.message_id] = time.perf_counter()

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: Any = None) -> None:
        end = time.perf_counter()
        with self.lock:
            self.spans.append(end - self.started.pop(message.message_id))
            self.last = end
            if len(self.spans) >= self.expected:
                self.done.set()


def main() -> None:
    url, messages, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    broker = RedisBroker(url=url)
    timing = Timing(messages)
    broker.middleware.insert(0, timing)
    dramatiq.set_broker(broker)

    @dramatiq.actor(max_retries=0)
    def noop(i: int) -> None:
        pass

    broker.flush_all()
    for i in range(messages):
        noop.send(i)
    worker = dramatiq.Worker(broker, worker_threads=threads)
    start = time.perf_counter()
    worker.start()
    try:
        if not timing.done.wait(timeout=600):
            raise SystemExit(f"only {len(timing.spans)} of {messages} messages processed in 600 s")
    finally:
        worker.stop()
    spans = sorted(timing.spans)
    p99 = spans[min(len(spans) - 1, int(0.99 * len(spans)))]
    print(json.dumps({"msgs_per_s": messages / (timing.last - start), "p99_ms": p99 * 1000}), flush=True)


if __name__ == "__main__":
    main()
