"""Where a document's figures come from: the commit they measured, and
the target directory its binaries are built in.

Every script in tools/ that writes a document (its section of
docs/BENCHMARKS.md, or docs/SCENARIOS.md) imports this module and calls
`commit_to_measure` first, before it builds anything:

    sys.dont_write_bytecode = True
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import provenance
    ...
    commit = provenance.commit_to_measure(writes=not args.no_write)

A run that will write a document refuses a tree with uncommitted changes
(tracked or untracked, outside .gitignore), so every figure in the
repository names a commit anyone can check out and rerun. A print-only
run (`--no-write`) may measure a dirty tree; its commit then reads
`<hash>+dirty`, which `is_clean` rejects.

The documents the scripts write are outputs, not inputs: changes to them
alone do not make the tree dirty, so one script may run after another has
rewritten its section, before anything is committed.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the scripts write. Keep in step with the scripts' outputs.
GENERATED = ("docs/BENCHMARKS.md", "docs/SCENARIOS.md")

DIRTY_SUFFIX = "+dirty"


def _git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, check=True, text=True, capture_output=True).stdout


def changed_paths():
    """Paths with uncommitted changes, tracked or untracked (not ignored),
    but the generated documents."""
    out = _git("status", "--porcelain=v1", "-z", "--untracked-files=all")
    paths, entries = [], out.split("\0")
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        status, path = entry[:2], entry[3:]
        if status[0] in "RC":
            i += 1  # a rename or copy is followed by its source path
        if path not in GENERATED:
            paths.append(path)
    return paths


def commit_to_measure(writes):
    """The commit under measurement, as `git rev-parse --short HEAD` gives it.

    When `writes`, a tree with uncommitted changes is refused: one line on
    standard error naming them, exit code 2. Otherwise a dirty tree is
    measured and its commit carries `+dirty`.
    """
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    try:
        commit = _git("rev-parse", "--short", "HEAD").strip()
        changed = changed_paths()
    except (OSError, subprocess.CalledProcessError) as e:
        if writes:
            sys.exit(f"{script}: cannot tell which commit is measured ({e}); pass --no-write to measure anyway")
        return "unknown" + DIRTY_SUFFIX
    if not changed:
        return commit
    if writes:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        print(f"{script}: refusing to write a document from a tree with uncommitted changes ({shown}); "
              "commit or stash them, or pass --no-write to measure without writing", file=sys.stderr)
        sys.exit(2)
    return commit + DIRTY_SUFFIX


def is_clean(commit):
    """True for a commit `commit_to_measure` returned from a clean tree."""
    return bool(commit) and not commit.endswith(DIRTY_SUFFIX) and commit != "unknown"


def target_dir():
    """Cargo's target directory for this checkout, as cargo itself resolves
    it (`CARGO_TARGET_DIR`, `build.target-dir`, else `target/`)."""
    out = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1"],
                         cwd=ROOT, check=True, text=True, capture_output=True).stdout
    return json.loads(out)["target_directory"]
