"""AsyncIO tasks keep the tag of the context that created them.

Every task an event loop creates (``create_task``, and through it
``ensure_future``, ``run_coroutine_threadsafe`` and task factories) gets
its coroutine wrapped when a tag is current there: each step of the task
then enters the tag natively on the event-loop thread and leaves it after,
so interleaved actors on one loop are attributed each to its own message.
"""

from __future__ import annotations

from typing import Any, Coroutine

from leakprof import _native, _tags


class TaggedCoroutine:
    """A coroutine that runs each step under a native tag."""

    __slots__ = ("_coro", "_tag_id")

    def __init__(self, coro: Coroutine[Any, Any, Any], tag_id: int) -> None:
        self._coro = coro
        self._tag_id = tag_id

    def send(self, value: Any) -> Any:
        prev = _native.enter(self._tag_id)
        try:
            return self._coro.send(value)
        finally:
            _native.end(self._tag_id, prev, 0)

    def throw(self, *args: Any) -> Any:
        prev = _native.enter(self._tag_id)
        try:
            return self._coro.throw(*args)
        finally:
            _native.end(self._tag_id, prev, 0)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> "TaggedCoroutine":
        return self

    def __iter__(self) -> "TaggedCoroutine":
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def __getattr__(self, name: str) -> Any:
        # cr_frame, cr_code, __qualname__...: asyncio's reprs and debugging.
        return getattr(self._coro, name)


def install() -> None:
    """Wraps ``BaseEventLoop.create_task`` (once)."""
    from asyncio import base_events

    original = base_events.BaseEventLoop.create_task
    if getattr(original, "_leakprof", False):
        return

    def create_task(self: Any, coro: Any, *, name: Any = None, context: Any = None) -> Any:
        tag_id = _tags.current.get() if context is None else context.get(_tags.current, 0)
        if tag_id and not isinstance(coro, TaggedCoroutine):
            coro = TaggedCoroutine(coro, tag_id)
        return original(self, coro, name=name, context=context)

    create_task._leakprof = True  # type: ignore[attr-defined]
    base_events.BaseEventLoop.create_task = create_task  # type: ignore[method-assign]
