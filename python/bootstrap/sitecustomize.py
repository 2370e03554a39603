"""Loaded by Python's `site` because `leakprof run` put this directory first
on PYTHONPATH: starts leakprof's recorder before the program's code runs,
then runs the `sitecustomize` this one shadows (a distribution's own)."""

import leakprof._bootstrap

leakprof._bootstrap.main(__file__)
