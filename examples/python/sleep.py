"""The seed's sleep scenario, the control: two AsyncIO actors allocate a
payload and sleep; one keeps it through the sleep, the other drops it
first. Both succeed, and nothing survives them on any Dramatiq version.

    leakprof run --out out -- python examples/python/sleep.py --payload-mib 32 --sleep 2

Flags and environment: see scenario.py (``--sleep``, default 5 s).
"""

import asyncio

import dramatiq

from scenario import OPTIONS, PAYLOAD, run


@dramatiq.actor(max_retries=0)
async def sleep_keeping() -> None:
    data = b"\x01" * PAYLOAD
    await asyncio.sleep(OPTIONS.sleep)
    print(f"kept {len(data)} bytes through the sleep", flush=True)


@dramatiq.actor(max_retries=0)
async def sleep_after_del() -> None:
    data = b"\x01" * PAYLOAD
    del data
    await asyncio.sleep(OPTIONS.sleep)


if __name__ == "__main__":
    run([(sleep_keeping, 1), (sleep_after_del, 1)])
