"""Tags: the native per-thread tag, and a context variable that carries it
into AsyncIO tasks (a native thread-local does not follow an actor's
coroutine onto the event-loop thread; a context variable does, and each
task step re-enters its tag natively, see ``_asyncio``)."""

from __future__ import annotations

import contextvars
import os
import threading
from typing import Dict, Optional, Union

from leakprof import _native

#: The tag id of the work running in this context (0: none).
current: contextvars.ContextVar[int] = contextvars.ContextVar("leakprof_tag", default=0)

#: The numbers of the tasks still open, by external id.
_tasks: Dict[str, int] = {}
_tasks_lock = threading.Lock()
#: Task numbers start above this: a forked child takes its pid's range, so
#: the profiles of a worker's processes merge without collisions.
_base = 0
#: Numbers handed out so far: a number is never handed out twice, since a
#: finished task's tags may still hold memory (and its description names it).
_handed = 0


def recording() -> bool:
    return _native.recording()


def task_number(external_id: str, actor: Optional[str], queue: Optional[str]) -> int:
    """The recorder's task number for an external id, described on first use."""
    global _handed
    with _tasks_lock:
        number = _tasks.get(external_id)
        if number is None:
            _handed += 1
            number = _base + _handed
            _tasks[external_id] = number
            _native.describe(number, external_id, actor, queue)
        return number


def finish(external_id: str) -> None:
    """The task of ``external_id`` is over: the recorder folds its tags
    with nothing alive, and its number is forgotten (so neither the
    recorder nor this table grows with every message a worker runs)."""
    with _tasks_lock:
        number = _tasks.pop(external_id, None)
    if number is not None:
        _native.finish(number)


def forked() -> None:
    """In a forked child: task numbers of its own (after os.fork)."""
    global _base, _handed, _tasks_lock
    _tasks_lock = threading.Lock()  # the parent's may have been held
    _tasks.clear()
    _base = os.getpid() << 32
    _handed = 0


class Scope:
    """One entry into a tag: native tag and context variable, left in
    reverse order."""

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
            number = task_number(str(task), actor, queue)
            self.tag_id = _native.tag(number, retry)
        self._prev = 0
        self._token: Optional[contextvars.Token[int]] = None

    def enter(self) -> None:
        if self.tag_id:
            self._token = current.set(self.tag_id)
            self._prev = _native.enter(self.tag_id)

    def exit(self) -> None:
        if self._token is not None:
            _native.exit(self.tag_id, self._prev)
            current.reset(self._token)
            self._token = None
