"""What the seed's scenarios share: flags, the broker, the worker run.

Each scenario file (``exception.py``, ``nested.py``, ``sleep.py``) defines
its actors on the broker made here and calls :func:`run`. Flags, each with
an environment variable as default:

  --payload-mib N   (PAYLOAD_MIB, default 128, the seed's) payload size
  --retries N       (RETRIES, default 5) retries of each failing message
  --redis-url URL   (REDIS_URL) a Redis broker there, such as
                    redis://localhost:6379/0; without it Dramatiq's
                    StubBroker, in the process (which keeps each message
                    that exhausted its retries, with its last exception)
  --gc on|off       (GC, default off) the cyclic garbage collector. Off,
                    garbage cycles stay until the end, as in the issue's
                    measurements; on, they wait for a collection, which
                    in a real worker comes every few hundred allocations

Payloads are filled (``b"\\x01" * PAYLOAD``), so every page is really used.
"""

from __future__ import annotations

import argparse
import gc
import os
import threading
from typing import Any, Optional

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware.asyncio import AsyncIO

MIB = 1 << 20


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payload-mib", type=int, default=int(os.environ.get("PAYLOAD_MIB", "128")))
    parser.add_argument("--retries", type=int, default=int(os.environ.get("RETRIES", "5")))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--gc", choices=["on", "off"], default=os.environ.get("GC", "off"))
    parser.add_argument("--sleep", type=float, default=float(os.environ.get("SLEEP_S", "5")),
                        help="seconds each sleep actor sleeps (SLEEP_S, default 5; the seed's was 30)")
    return parser.parse_args()


OPTIONS = _parse()
if OPTIONS.gc == "off":
    gc.disable()

broker = RedisBroker(url=OPTIONS.redis_url) if OPTIONS.redis_url else StubBroker()
broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)


# The actors build their payloads as `b"\x01" * PAYLOAD` on their own lines
# (so the allocation's site is the actor's), every byte written.
PAYLOAD = OPTIONS.payload_mib * MIB


class BigError(Exception):
    """An error that holds a payload (Dramatiq logs it: keep the payload
    out of the log)."""

    def __str__(self) -> str:
        return f"{type(self).__name__}(payload)"


class Attempts(dramatiq.Middleware):  # type: ignore[misc]
    """Says when every attempt has been processed: a broker's ``join`` can
    return while a retry waits between its queues."""

    def __init__(self) -> None:
        self.left = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def expect(self, attempts: int) -> None:
        with self.lock:
            self.left += attempts

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None,
                              exception: Optional[BaseException] = None) -> None:
        with self.lock:
            self.left -= 1
            if self.left <= 0:
                self.done.set()


attempts = Attempts()
broker.add_middleware(attempts)


def run(sends: list[tuple[Any, int]], timeout: float = 600.0) -> None:
    """Sends each actor's message and runs a worker until every attempt
    ran: ``sends`` lists (actor, attempts its message will take)."""
    if OPTIONS.redis_url:
        broker.flush_all()
    for _, count in sends:
        attempts.expect(count)
    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()
    try:
        for actor, _ in sends:
            message = actor.send()
            print(f"message {message.message_id} ({actor.actor_name})", flush=True)
        if not attempts.done.wait(timeout=timeout):
            raise SystemExit(f"the attempts did not all run within {timeout:.0f} s")
        worker.join()
    finally:
        worker.stop()
