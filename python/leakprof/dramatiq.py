"""Tags for Dramatiq: each message's work is attributed to its task (the
message id as external id, the actor and the queue) and its retry
(``message.options["retries"]``).

Under ``leakprof run`` the middleware is added to every broker when
Dramatiq is imported; ``broker.add_middleware(LeakprofMiddleware())`` adds
it explicitly.
"""

from __future__ import annotations

import threading
from typing import Any

import dramatiq
from dramatiq.broker import Broker
from dramatiq.message import Message

from leakprof import _native, _tags

# leakprof::format::events: the timeline's failure points.
_AFTER_FAILURE = "after failure"

__all__ = ["LeakprofMiddleware", "install"]


class LeakprofMiddleware(dramatiq.Middleware):  # type: ignore[misc]
    """Enters the message's tag before it is processed, leaves it after.

    The tag is set in the worker thread (sync actors) and in a context
    variable that AsyncIO actors' tasks carry to the event-loop thread.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def before_process_message(self, broker: Broker, message: Message) -> None:
        fields = _fields(message)
        scope = _tags.Scope(
            fields.message_id,
            int(fields.options.get("retries", 0)),
            actor=fields.actor_name,
            queue=fields.queue_name,
        )
        scope.enter()
        self._local.scope = scope

    def after_process_message(
        self, broker: Broker, message: Message, *, result: Any = None, exception: Any = None
    ) -> None:
        # Failures are marked (the timeline shows what each one left);
        # successes are not: a mark reads RSS, and a point per message of
        # a busy worker only crowds the timeline the sampler already keeps.
        if exception is not None:
            _native.mark(_AFTER_FAILURE)
        # Retries (before us) marks a message out of retries as failed.
        over = exception is None or getattr(message, "failed", False)
        self._leave(_fields(message).message_id if over else "")

    def after_skip_message(self, broker: Broker, message: Message) -> None:
        self._leave(_fields(message).message_id)

    def _leave(self, finished: str) -> None:
        """Leaves the message's tag; ``finished``: the message id when the
        message is over (succeeded, failed for good, skipped)."""
        scope = getattr(self._local, "scope", None)
        if scope is not None:
            self._local.scope = None
            scope.exit(finished)
        elif finished:
            _tags.finish(finished)


def _fields(message: Any) -> Any:
    """The message's own fields: a worker hands middleware a
    ``MessageProxy``, whose ``__getattr__`` is reached only after the normal
    lookup has raised (and formatted) an AttributeError, five allocations
    and a Python call per field read, each recorded in the message's
    work."""
    return getattr(message, "_message", message)


def install() -> None:
    """Makes every broker created from now on carry the middleware (once)."""
    original = Broker.__init__
    if getattr(original, "_leakprof", False):
        return

    def __init__(self: Broker, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if not any(isinstance(m, LeakprofMiddleware) for m in self.middleware):
            self.add_middleware(LeakprofMiddleware())

    __init__._leakprof = True  # type: ignore[attr-defined]
    Broker.__init__ = __init__  # type: ignore[method-assign]
