"""Tags: the native per-thread tag, and a context variable that carries it
into AsyncIO tasks (a native thread-local does not follow an actor's
coroutine onto the event-loop thread; a context variable does, and each
task step re-enters its tag natively, see ``_asyncio``)."""

from __future__ import annotations

import contextvars
import itertools
import os
from typing import Dict, Optional, Tuple, Union

from leakprof import _native

#: The tag id of the work running in this context (0: none).
current: contextvars.ContextVar[int] = contextvars.ContextVar("leakprof_tag", default=0)

#: The numbers of the tasks still open, by external id.
_tasks: Dict[str, int] = {}
#: Task numbers start above this: a forked child takes its pid's range, so
#: the profiles of a worker's processes merge without collisions.
_base = 0
#: Numbers handed out: a number is never handed out twice, since a
#: finished task's tags may still hold memory (and its description names
#: it). ``next`` on it is atomic under the GIL, as is ``dict.setdefault``
#: with a ``str`` key, so no lock is needed.
_numbers = itertools.count(1)


def recording() -> bool:
    return _native.recording()


def claim(external_id: str) -> Tuple[int, bool]:
    """The recorder's task number for an external id, and whether it is
    new (to be described)."""
    number = _tasks.get(external_id)
    if number is not None:
        return number, False
    candidate = _base + next(_numbers)
    number = _tasks.setdefault(external_id, candidate)
    return number, number == candidate


def forget(external_id: str) -> int:
    """The task of ``external_id`` is over: its number (0: none) is
    forgotten here, so this table does not grow with every message a
    worker runs; hand it to ``_native.end`` to fold its tags."""
    return _tasks.pop(external_id, 0)


def forked() -> None:
    """In a forked child: task numbers of its own (after os.fork)."""
    global _base, _numbers
    _tasks.clear()
    _base = os.getpid() << 32
    _numbers = itertools.count(1)


class Scope:
    """One entry into a tag: context variable and native tag, left in
    reverse order. The context variable is set first and reset last, so
    its own objects (a token, a context kept on a free list) are never
    allocated under the tag."""

    __slots__ = ("tag_id", "_prev", "_token")

    def __init__(
        self,
        task: Union[str, int],
        retry: Optional[int] = None,
        *,
        actor: Optional[str] = None,
        queue: Optional[str] = None,
    ) -> None:
        self.tag_id = 0
        if _native.recording():
            external_id = str(task)
            number, new = claim(external_id)
            self.tag_id = _native.begin(
                number,
                -1 if retry is None else retry,
                external_id if new else None,
                actor,
                queue,
            )
        self._prev = 0
        self._token: Optional[contextvars.Token[int]] = None

    def enter(self) -> None:
        if self.tag_id:
            self._token = current.set(self.tag_id)
            self._prev = _native.enter(self.tag_id)

    def exit(self, finished: str = "") -> None:
        """Leaves the tag; when ``finished`` names an external id, that
        task is over too (one native call for both)."""
        if self._token is not None:
            _native.end(self.tag_id, self._prev, forget(finished) if finished else 0)
            current.reset(self._token)
            self._token = None
        elif finished:
            finish(finished)


def finish(external_id: str) -> None:
    """The task of ``external_id`` is over: the recorder folds its tags
    with nothing alive, and its number is forgotten."""
    number = forget(external_id)
    if number and _native.recording():
        _native.end(0, 0, number)
