"""The seed's exception scenario on real Dramatiq: an AsyncIO actor raises an
exception holding a payload; every attempt fails and is retried.

Run by tests/python_run.rs under `leakprof run`. Environment:
LEAKPROF_TEST_PAYLOAD (bytes), LEAKPROF_TEST_RETRIES, LEAKPROF_TEST_MESSAGES,
LEAKPROF_TEST_THREADS, LEAKPROF_TEST_REDIS_URL (a Redis broker there; else
Dramatiq's StubBroker, which itself keeps every failed message's exception)
and LEAKPROF_TEST_STEPS: the payload is built in that
many chunks with an `await` between them, so the actors of several worker
threads interleave on the one event loop. The garbage collector is off, so
every payload the reference cycle holds stays until the end, unless
LEAKPROF_TEST_GC is set: then the collector runs with that gen-0 threshold,
is paused for the last attempt (so its payload is certain to await it),
and after the attempts the script sends itself LEAKPROF_TEST_SNAPSHOT_SIGNAL
(a snapshot with the object graph), then collects.
"""

import asyncio
import gc
import os
import signal
import threading

GC_THRESHOLD = int(os.environ.get("LEAKPROF_TEST_GC", "0"))
if GC_THRESHOLD:
    gc.set_threshold(GC_THRESHOLD, 2, 2)
else:
    gc.disable()

import dramatiq  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402
from dramatiq.brokers.stub import StubBroker  # noqa: E402
from dramatiq.middleware.asyncio import AsyncIO  # noqa: E402

PAYLOAD = int(os.environ.get("LEAKPROF_TEST_PAYLOAD", str(32 << 20)))
RETRIES = int(os.environ.get("LEAKPROF_TEST_RETRIES", "5"))
MESSAGES = int(os.environ.get("LEAKPROF_TEST_MESSAGES", "1"))
THREADS = int(os.environ.get("LEAKPROF_TEST_THREADS", "1"))
STEPS = int(os.environ.get("LEAKPROF_TEST_STEPS", "1"))

REDIS_URL = os.environ.get("LEAKPROF_TEST_REDIS_URL")

broker = RedisBroker(url=REDIS_URL) if REDIS_URL else StubBroker()
broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)


class Attempts(dramatiq.Middleware):
    """Says when every attempt of every message has been processed (a
    broker's `join` can return while a retry is between its queues)."""

    def __init__(self, expected: int) -> None:
        self.left = expected
        self.lock = threading.Lock()
        self.done = threading.Event()

    def before_process_message(self, broker, message):
        if GC_THRESHOLD and message.options.get("retries", 0) >= RETRIES:
            gc.disable()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        with self.lock:
            self.left -= 1
            if self.left <= 0:
                self.done.set()


attempts = Attempts(MESSAGES * (RETRIES + 1))
broker.add_middleware(attempts)


class BigError(Exception):
    def __str__(self) -> str:
        # Dramatiq logs the error: keep the payload out of the log.
        return "BigError(payload)"


@dramatiq.actor(max_retries=RETRIES, min_backoff=10, max_backoff=20)
async def fail(n: int) -> None:
    chunks = []
    for step in range(STEPS):
        if step:
            await asyncio.sleep(0.02)
        chunks.append(b"\x01" * (PAYLOAD // STEPS))  # LEAKPROF-PAYLOAD-LINE
    raise BigError(chunks[0] if STEPS == 1 else chunks)


def main() -> None:
    if REDIS_URL:
        broker.flush_all()
    worker = dramatiq.Worker(broker, worker_threads=THREADS)
    worker.start()
    try:
        for n in range(MESSAGES):
            message = fail.send(n)
            print(f"message {message.message_id}", flush=True)
        if not attempts.done.wait(timeout=120):
            raise SystemExit("the attempts did not all run within 120 s")
        worker.join()
    finally:
        worker.stop()
    if GC_THRESHOLD:
        # raise_signal runs the handler (the snapshot) before it returns.
        signal.raise_signal(int(os.environ["LEAKPROF_TEST_SNAPSHOT_SIGNAL"]))
        gc.enable()
        gc.collect()


if __name__ == "__main__":
    main()
