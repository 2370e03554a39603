"""Start-up inside the recorded program (run by the ``sitecustomize`` that
``leakprof run`` puts first on PYTHONPATH).

It loads the native recorder, starts it, tells ``leakprof run`` whether it
could (the file ``LEAKPROF_READY``: ``ok`` or ``error: <reason>``; on an
error the program stops before its code runs), arranges for the profile to
be written at exit, and installs the tag integrations when their modules
are imported (AsyncIO, Dramatiq).
"""

from __future__ import annotations

import atexit
import gc
import importlib.abc
import importlib.machinery
import importlib.util
import os
import signal
import sys
from types import ModuleType
from typing import Callable, Dict, Optional, Sequence

from leakprof import _native


def main(sitecustomize_file: str) -> None:
    env = os.environ
    native = env.get("LEAKPROF_NATIVE")
    out = env.get("LEAKPROF_OUT")
    ready = env.pop("LEAKPROF_READY", None)
    # The process `leakprof run` started says whether it could record (the
    # ready file) and writes profile.json. Python programs it starts in
    # turn (multiprocessing's spawn, a subprocess, an exec) keep the
    # variables, record too, and write profile-<pid>.json, which `leakprof
    # run` merges; one that cannot record runs on unrecorded, with a word.
    if native and out and ready:
        env["LEAKPROF_ROOT_PID"] = str(os.getpid())
        _start(native, out, ready, os.getpid())
    elif native and out:
        root = int(env.get("LEAKPROF_ROOT_PID", "0") or 0)
        _start(native, out, None, root)
    _chain_sitecustomize(sitecustomize_file)


def _start(native: str, out: str, ready: Optional[str], root: int) -> None:
    """Starts recording. `ready`: the file to tell (the process `leakprof
    run` started; it stops here if it cannot record); None in a
    descendant, which then runs on unrecorded. `root`: the pid whose
    profile is profile.json."""
    try:
        _native.load(native)
        _native.start(
            int(os.environ.get("LEAKPROF_MAX_FRAMES", "64")),
            int(os.environ.get("LEAKPROF_TIMELINE_MS", "100")),
        )
    except (OSError, RuntimeError, ValueError) as e:
        if ready is None:
            print(f"leakprof: not recording {' '.join(sys.argv)} (pid {os.getpid()}): {e}", file=sys.stderr)
            return
        _tell(ready, f"error: {e}")
        os._exit(3)
    if os.getpid() != root:
        # A descendant started anew: task numbers of its own, as a forked
        # child takes.
        from leakprof import _tags

        _tags.forked()
    atexit.register(_write, out, root)
    _write_before_os_exit(out, root)
    os.register_at_fork(after_in_child=_in_child)
    gc.callbacks.append(_collection_on_timeline)
    _on_snapshot_signal(out, int(os.environ.get("LEAKPROF_SNAPSHOT_SIGNAL", "0")))
    hooks = {"asyncio": _install_asyncio, "dramatiq": _install_dramatiq}
    for name in [name for name in hooks if name in sys.modules]:
        hooks.pop(name)(sys.modules[name])  # imported before us (a .pth file)
    sys.meta_path.insert(0, _AfterImport(hooks))
    if ready is not None:
        _tell(ready, "ok")


def _collection_on_timeline(phase: str, info: Dict[str, int]) -> None:
    """Marks the start and end of each collection that freed objects on
    the timeline (`leakprof::format::events`): what the collector frees,
    it frees between the two."""
    freed = info.get("collected", 0) + info.get("uncollectable", 0)
    _native.collection(phase == "start", freed)


def _tell(path: str, line: str) -> None:
    """Writes the word whole: `leakprof run` may read the file the moment
    it appears."""
    partial = f"{path}.{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(line.replace("\n", " ") + "\n")
    os.replace(partial, path)


_written_by: Optional[int] = None


def _write(out: str, root: int) -> None:
    """Writes this process's profile once: `profile.json` for the process
    `leakprof run` started, `profile-<pid>.json` for a forked child."""
    global _written_by
    pid = os.getpid()
    if _written_by == pid:
        return
    _written_by = pid
    name = "profile.json" if pid == root else f"profile-{pid}.json"
    # Strings only while the profile is written: a dict, list or tuple
    # held here could be one the interpreter reused from a free list, its
    # block still tagged with the task that first allocated it.
    attributes = _native.attribute_lines(
        {"program": " ".join(sys.argv), "python": sys.version.split()[0]}
    )
    try:
        _native.write(os.path.join(out, name), attributes)
    except RuntimeError as e:
        print(f"leakprof: writing the profile: {e}", file=sys.stderr)


def _on_snapshot_signal(out: str, signum: int) -> None:
    """The snapshot signal writes `profile-<pid>-snapshot-<n>.json`. Python
    runs the handler in the main thread between two bytecodes, so with the
    GIL held and never inside an allocation."""
    if not signum:
        return
    count = 0

    def take(_signum: int, _frame: object) -> None:
        nonlocal count
        count += 1
        path = os.path.join(out, f"profile-{os.getpid()}-snapshot-{count}.json")
        try:
            _native.snapshot(path)
        except RuntimeError as e:
            print(f"leakprof: writing a snapshot: {e}", file=sys.stderr)

    signal.signal(signum, take)


def _write_before_os_exit(out: str, root: int) -> None:
    """os._exit skips atexit; multiprocessing's children end in it."""
    original_exit = os._exit

    def exit_with_profile(code: int) -> None:
        _write(out, root)
        original_exit(code)

    os._exit = exit_with_profile  # type: ignore[assignment]


def _in_child() -> None:
    """A forked child records on (the recorder survives fork), under task
    numbers of its own, and writes its profile at exit like its parent."""
    from leakprof import _tags

    _tags.forked()


def _install_asyncio(_module: ModuleType) -> None:
    from leakprof import _asyncio

    _asyncio.install()


def _install_dramatiq(_module: ModuleType) -> None:
    from leakprof import dramatiq as integration

    integration.install()


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a callback right after a top-level module's code ran."""

    def __init__(self, callbacks: Dict[str, Callable[[ModuleType], None]]) -> None:
        self._callbacks = dict(callbacks)

    def find_spec(
        self,
        fullname: str,
        path: Optional[Sequence[str]],
        target: Optional[ModuleType] = None,
    ) -> Optional[importlib.machinery.ModuleSpec]:
        callback = self._callbacks.pop(fullname, None)
        if callback is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = spec.loader if spec is not None else None
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_then_install(module: ModuleType) -> None:
            exec_module(module)
            callback(module)

        loader.exec_module = exec_then_install  # type: ignore[union-attr]
        return spec


def _chain_sitecustomize(ours: str) -> None:
    """Runs the next ``sitecustomize`` on sys.path (a distribution's own),
    which ours shadows."""
    here = os.path.dirname(os.path.abspath(ours))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)
