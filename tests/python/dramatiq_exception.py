"""The seed's exception scenario on real Dramatiq: an AsyncIO actor raises an
exception holding a payload; every attempt fails and is retried.

Run by tests/python_run.rs under `leakprof run`. Environment:
LEAKPROF_TEST_PAYLOAD (bytes), LEAKPROF_TEST_RETRIES, LEAKPROF_TEST_MESSAGES,
LEAKPROF_TEST_THREADS and LEAKPROF_TEST_STEPS: the payload is built in that
many chunks with an `await` between them, so the actors of several worker
threads interleave on the one event loop. The garbage collector is off, so
every payload the reference cycle holds stays until the end.
"""

import asyncio
import gc
import os

gc.disable()

import dramatiq  # noqa: E402
from dramatiq.brokers.stub import StubBroker  # noqa: E402
from dramatiq.middleware.asyncio import AsyncIO  # noqa: E402

PAYLOAD = int(os.environ.get("LEAKPROF_TEST_PAYLOAD", str(32 << 20)))
RETRIES = int(os.environ.get("LEAKPROF_TEST_RETRIES", "5"))
MESSAGES = int(os.environ.get("LEAKPROF_TEST_MESSAGES", "1"))
THREADS = int(os.environ.get("LEAKPROF_TEST_THREADS", "1"))
STEPS = int(os.environ.get("LEAKPROF_TEST_STEPS", "1"))

broker = StubBroker()
broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)


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
    worker = dramatiq.Worker(broker, worker_threads=THREADS)
    worker.start()
    try:
        for n in range(MESSAGES):
            message = fail.send(n)
            print(f"message {message.message_id}", flush=True)
        # Every attempt fails and the last is dead-lettered: wait for all of
        # them without raising the actor's error here.
        broker.join(fail.queue_name, fail_fast=False)
        worker.join()
    finally:
        worker.stop()


if __name__ == "__main__":
    main()
