"""The seed's exception scenario: an AsyncIO actor raises an exception
that holds a payload, and every attempt fails until the retries run out.
On Dramatiq 2.0.0 each failed attempt's exception stays alive (a reference
cycle through the AsyncIO middleware's future): one payload per retry.

    leakprof run --out out -- python examples/python/exception.py --payload-mib 32

Flags and environment: see scenario.py.
"""

import dramatiq

from scenario import OPTIONS, PAYLOAD, BigError, run


@dramatiq.actor(max_retries=OPTIONS.retries, min_backoff=10, max_backoff=20)
async def fail() -> None:
    raise BigError(b"\x01" * PAYLOAD)


if __name__ == "__main__":
    run([(fail, OPTIONS.retries + 1)])
