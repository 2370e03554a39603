"""The seed's nested scenario: an AsyncIO actor raises an error chained
(``raise ... from``) to another, each holding its own payload. What keeps
the outer error alive keeps the inner one too, through ``__cause__``: on
Dramatiq 2.0.0, two payloads per retry.

    leakprof run --out out -- python examples/python/nested.py --payload-mib 32

Flags and environment: see scenario.py.
"""

import dramatiq

from scenario import OPTIONS, PAYLOAD, BigError, run


class InnerError(BigError):
    pass


class OuterError(BigError):
    pass


@dramatiq.actor(max_retries=OPTIONS.retries, min_backoff=10, max_backoff=20)
async def fail_nested() -> None:
    try:
        raise InnerError(b"\x01" * PAYLOAD)
    except InnerError as inner:
        raise OuterError(b"\x01" * PAYLOAD) from inner


if __name__ == "__main__":
    run([(fail_nested, OPTIONS.retries + 1)])
