"""Owners: labels for the objects that hold memory on purpose.

``leakprof.owner.register("session cache", cache)`` names ``cache`` in the
heap graph: what it keeps alive is reported under the owner "session
cache" (``leakprof report --by owner``), as exceptions and what they keep
alive are reported under "error value".

An object that can be weakly referenced is held weakly: registering it
does not change when it is freed. Others (a ``dict``, a ``list``) are held
by the registration until ``unregister`` is called, so register only what
lives as long as the program anyway.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, List, Tuple

_lock = threading.Lock()
_owners: List[Tuple[Callable[[], Any], str]] = []


def register(label: str, obj: Any) -> None:
    """Names ``obj`` (and what it alone keeps alive) ``label`` in the graph."""
    if not isinstance(label, str) or not label:
        raise ValueError("an owner's label is a non-empty str")
    try:
        ref: Callable[[], Any] = weakref.ref(obj)
    except TypeError:
        ref = lambda: obj  # noqa: E731 (held: the type has no weak references)
    with _lock:
        _owners.append((ref, label))


def unregister(obj: Any) -> None:
    """Forgets every registration of ``obj``."""
    with _lock:
        _owners[:] = [(r, label) for r, label in _owners if r() is not obj]


def registered() -> List[Tuple[Any, str]]:
    """The registered owners still alive, as (object, label) pairs."""
    with _lock:
        return [(o, label) for o, label in ((r(), label) for r, label in _owners) if o is not None]
