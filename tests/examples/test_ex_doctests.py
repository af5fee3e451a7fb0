"""Runs the docstring examples of ``examples/common``, ``compare_runs`` and ``sweep``, default test paths."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "common.augment",
    "common.checkpoint",
    "common.checks",
    "common.config",
    "common.data",
    "common.diagnostics",
    "common.dist",
    "common.evaluation",
    "common.interrupt",
    "common.loader",
    "common.loop",
    "common.npz",
    "common.optim",
    "common.paths",
    "common.outputs",
    "common.plots",
    "common.probes",
    "common.progress",
    "common.rate",
    "common.run",
    "common.splits",
    "common.views",
    "compare_runs",
    "sweep",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False)
    assert result.attempted > 0, f"no docstring examples found in {name}"
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
