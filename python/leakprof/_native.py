"""The native recorder (``libleakprof_python.so``, built from
python/native), called through ``ctypes.PyDLL`` so every call holds the GIL.
Loaded only when ``leakprof run`` says where it is (``LEAKPROF_NATIVE``).

The calls made for every message and every AsyncIO task step (``begin``,
``enter``, ``end``) go to ``leakprof._fast``, an extension module in the same
library: a ``ctypes`` call costs about half a microsecond of argument
conversion, a built-in function's call a tenth of that."""

from __future__ import annotations

import ctypes
import gc
import os
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Tuple

_lib: Optional[ctypes.PyDLL] = None
_ERR_LEN = 512


# The C ABI this package calls (`leakprof_py_abi` in python/native).
_ABI = 4


def _not_loaded(*args: Any) -> Any:
    raise RuntimeError("the leakprof recorder is not loaded")


#: ``begin(task, retry, external_id, actor, queue) -> tag id``: the tag of
#: (task, retry; ``retry < 0``: none); the task is described first when
#: ``external_id`` is not None.
begin: Any = _not_loaded
#: ``enter(tag_id) -> previous``: this thread's tag is ``tag_id``.
enter: Any = _not_loaded
#: ``end(tag_id, previous, finished_task)``: back to ``previous`` (tag id
#: 0: nothing to leave); when ``finished_task`` is not 0, that task is over
#: and its tags with nothing alive are folded.
end: Any = _not_loaded


def load(path: str) -> None:
    global _lib, begin, enter, end
    lib = ctypes.PyDLL(path)
    abi = getattr(lib, "leakprof_py_abi", None)
    if abi is None or abi() != _ABI:
        raise RuntimeError(
            f"{path} is from another leakprof build (its C ABI is not version {_ABI}): "
            "build the binary and the library together"
        )
    lib.leakprof_py_start.argtypes = [
        ctypes.c_size_t,
        ctypes.c_uint32,
        ctypes.c_uint64,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.leakprof_py_start.restype = ctypes.c_int
    lib.leakprof_py_mark.argtypes = [ctypes.c_char_p]
    lib.leakprof_py_mark.restype = None
    lib.leakprof_py_collection.argtypes = [ctypes.c_int, ctypes.c_uint64]
    lib.leakprof_py_collection.restype = None
    # Both writers take the graph's inputs (objects, owners, collector on)
    # and an error buffer.
    graph_and_error = [ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    lib.leakprof_py_write.argtypes = [ctypes.c_char_p, ctypes.c_char_p, *graph_and_error]
    lib.leakprof_py_write.restype = ctypes.c_int
    lib.leakprof_py_snapshot.argtypes = [ctypes.c_char_p, *graph_and_error]
    lib.leakprof_py_snapshot.restype = ctypes.c_int
    fast = _extension(path)
    begin, enter, end = fast.begin, fast.enter, fast.end
    _lib = lib


def _extension(path: str) -> Any:
    """``leakprof._fast`` from the library at ``path`` (its ``PyInit__fast``)."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.ExtensionFileLoader("leakprof._fast", path)
    spec = importlib.util.spec_from_file_location("leakprof._fast", path, loader=loader)
    assert spec is not None
    return importlib.util.module_from_spec(spec)


def recording() -> bool:
    return _lib is not None


def start(max_frames: int, timeline_ms: int) -> None:
    """Starts recording; raises RuntimeError with the recorder's reason."""
    assert _lib is not None
    err = ctypes.create_string_buffer(_ERR_LEN)
    # The recorder checks the frame layout it reads against this very
    # function's frame: it must be the innermost one.
    if _lib.leakprof_py_start(id(start.__code__), max_frames, timeline_ms, err, _ERR_LEN):
        raise RuntimeError(err.value.decode("utf-8", "replace"))


def mark(event: str) -> None:
    """A timeline point with this thread's tag (leakprof::format::events)."""
    if _lib is not None:
        _lib.leakprof_py_mark(event.encode())


def collection(start: bool, collected: int) -> None:
    """The collector starts a collection, or ends one that freed
    ``collected`` objects: those that freed any are marked on the timeline."""
    if _lib is not None:
        _lib.leakprof_py_collection(int(start), max(collected, 0))


def _c(text: Optional[str]) -> Optional[bytes]:
    return None if text is None else text.encode("utf-8", "replace")


@contextmanager
def _graph_inputs(graph: bool) -> Iterator[Tuple[int, int, int]]:
    """The object graph's inputs for the native walk: the collector's
    objects, the registered owners, and whether the collector was on. The
    collector stays paused until the walk is over, so nothing it would
    free (the cyclic garbage under study) goes while it is read."""
    enabled = gc.isenabled()
    gc.disable()
    objects: Optional[List[object]] = None
    try:
        if not graph:
            yield 0, 0, int(enabled)
            return
        from leakprof import owner

        owners = owner.registered()
        objects = gc.get_objects()
        yield id(objects), id(owners) if owners else 0, int(enabled)
    finally:
        del objects
        if enabled:
            gc.enable()


def attribute_lines(attributes: dict[str, str]) -> str:
    """The profile's metadata as `write` takes it: `key=value` lines."""
    return "\n".join(f"{k}={v}" for k, v in attributes.items() if "\n" not in k + v)


def write(path: str, attributes: str, graph: bool = True) -> None:
    """Stops recording and writes the profile, with the object graph;
    `attributes` from `attribute_lines`."""
    assert _lib is not None
    err = ctypes.create_string_buffer(_ERR_LEN)
    with _graph_inputs(graph) as (objects, owners, enabled):
        failed = _lib.leakprof_py_write(
            os.fsencode(path), _c(attributes), objects, owners, enabled, err, _ERR_LEN
        )
    if failed:
        raise RuntimeError(err.value.decode("utf-8", "replace"))


def snapshot(path: str, graph: bool = True) -> None:
    """Writes a profile of everything live now, with the object graph;
    recording goes on."""
    assert _lib is not None
    err = ctypes.create_string_buffer(_ERR_LEN)
    with _graph_inputs(graph) as (objects, owners, enabled):
        failed = _lib.leakprof_py_snapshot(
            os.fsencode(path), objects, owners, enabled, err, _ERR_LEN
        )
    if failed:
        raise RuntimeError(err.value.decode("utf-8", "replace"))
