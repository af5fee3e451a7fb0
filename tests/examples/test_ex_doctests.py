"""Runs the docstring examples of ``examples/common``, ``compare_runs`` and ``sweep``."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["common.checkpoint", "common.config", "common.data", "common.evaluation", "common.augment",
           "common.optim", "common.report", "common.views", "compare_runs", "sweep"]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.attempted > 0, f"no docstring examples found in {name}"
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
