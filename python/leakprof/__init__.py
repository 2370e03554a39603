"""leakprof inside a Python program: tags that say which task made each
allocation.

`leakprof run -- python app.py` records every allocation of the program.
Work done inside ``with leakprof.tag(task=..., retry=...)`` is attributed to
that task and retry, in the thread that runs it and in the AsyncIO tasks it
creates. Dramatiq workers are tagged without any code: see
``leakprof.dramatiq``. Outside ``leakprof run`` the API does nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Union

from leakprof import _tags, owner

__all__ = ["tag", "recording", "owner"]


def recording() -> bool:
    """True when leakprof records this process."""
    return _tags.recording()


@contextmanager
def tag(
    task: Union[str, int],
    retry: Optional[int] = None,
    *,
    actor: Optional[str] = None,
    queue: Optional[str] = None,
) -> Iterator[None]:
    """Attributes the allocations made inside the block to ``task`` (its
    external id, such as a message id) and ``retry``."""
    scope = _tags.Scope(task, retry, actor=actor, queue=queue)
    scope.enter()
    try:
        yield
    finally:
        scope.exit()
