"""How the benchmark scripts in tools/ guard against noise and report: the
one place that says how a configuration is run and how its figures are
summed up.

- Every configuration runs once per round, `rounds` rounds (default and
  minimum for a run that writes a document: 5), interleaved: each round
  runs every configuration once, and the order turns by one place each
  round, so a slow spell of the machine falls on all configurations alike
  and none always runs first or last (`interleave`).
- Each figure is the median of its rounds, with the spread written beside
  it as the smallest and largest round: `42.9 (41.8–44.0)` (`cell`).
  Comparisons between two configurations (added cost, ratios) are taken
  per round, between the two runs of the same round, then summed up the
  same way (`paired`). Targets are judged on medians.
- Each run prints one progress line on standard error (`Progress`).

The scripts import it after `provenance` (no __pycache__ in tools/):

    sys.dont_write_bytecode = True
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import benchdoc
    import provenance
"""

import os
import platform
import statistics
import subprocess
import sys
import time

DEFAULT_ROUNDS = 5
# Fewer rounds measure, but never reach a document: with fewer than five,
# one disturbed run moves the median.
MIN_ROUNDS_TO_WRITE = 5


def check_rounds(rounds, writes):
    """Exits (code 2, one line) when `rounds` is too few for what is asked."""
    script = os.path.basename(sys.argv[0])
    if rounds < 1:
        sys.exit(f"{script}: --rounds must be at least 1 (got {rounds})")
    if writes and rounds < MIN_ROUNDS_TO_WRITE:
        print(f"{script}: refusing to write a document from {rounds} rounds (at least {MIN_ROUNDS_TO_WRITE}); "
              "pass --no-write to measure anyway", file=sys.stderr)
        sys.exit(2)


def interleave(rounds, runs):
    """Yields (round, run) for every run of every round: each round runs
    every item of `runs` once, the order turned by one place per round."""
    runs = list(runs)
    for rnd in range(rounds):
        k = rnd % len(runs) if runs else 0
        for run in runs[k:] + runs[:k]:
            yield rnd, run


class Progress:
    """One line on standard error per run: `[7/40 round 2/5, 0:41] what: figures`."""

    def __init__(self, total, rounds):
        self.total, self.rounds, self.done = total, rounds, 0
        self.t0 = time.monotonic()

    def line(self, rnd, what, text):
        self.done += 1
        elapsed = int(time.monotonic() - self.t0)
        print(f"[{self.done}/{self.total} round {rnd + 1}/{self.rounds}, {elapsed // 60}:{elapsed % 60:02d}] {what}: {text}",
              file=sys.stderr, flush=True)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cell(values, fmt="{:.1f}"):
    """`median (min–max)` of the rounds' values, each written with `fmt`;
    `-` when no round measured it; the median alone for a single round."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    m = fmt.format(statistics.median(values))
    if len(values) == 1:
        return m
    return f"{m} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def paired(a, b, combine):
    """Per round, `combine(a[i], b[i])` for the rounds in which both were
    measured (a and b: lists indexed by round, None for a failed run)."""
    return [combine(x, y) for x, y in zip(a, b) if x is not None and y is not None]


def spread_note(rounds, paired_figures=True):
    """The sentence a document gives on how its figures were summed up."""
    note = (f"Each figure is the median of {rounds} interleaved rounds (every round runs every configuration once, "
            f"in an order turned by one place each round), with the smallest and largest round in brackets: "
            f"median (min–max).")
    if paired_figures:
        note += (" Added costs and ratios are taken per round, against the same round's run of the configuration "
                 "compared with, then summed up the same way.")
    return note + " Targets are judged on medians."


def load_note(load_start, load_end):
    return f"1-minute load average {load_start:.2f} at the start, {load_end:.2f} at the end"


def machine():
    """CPU, cores, memory, kernel and compiler of this machine, one line."""
    cpu = "unknown CPU"
    mem = 0.0
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
        with open("/proc/meminfo") as f:
            mem = next((int(l.split()[1]) / 2**20 for l in f if l.startswith("MemTotal")), mem)
    except OSError:
        pass
    rustc = subprocess.run(["rustc", "--version"], text=True, capture_output=True).stdout.strip() or "rustc unknown"
    return f"{cpu}, {os.cpu_count()} cores, {mem:.1f} GiB RAM (MemTotal), Linux {platform.release()}, {rustc}"


def write_section(path, name, title, text):
    """Replaces the section between `<!-- name:begin -->` and
    `<!-- name:end -->` of the document at `path` (appends it when absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n## {title}\n\n{text}\n{end}"
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + section + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(new)
    print(f"\nwrote {path}", file=sys.stderr)
