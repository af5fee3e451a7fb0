"""Progress reporting: plain lines off a TTY, a tqdm bar on one, silence on non-zero ranks."""

from __future__ import annotations

import io
import re

from common.progress import ProgressReporter, format_metrics


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_mode_prints_periodic_lines() -> None:
    out = io.StringIO()
    with ProgressReporter(10, desc="train", stream=out, log_every=4) as progress:
        for step in range(10):
            progress.update(samples=64, loss=1.0 / (step + 1), lr=3e-4, tau=0.996)
        progress.write("epoch 0 done")
    lines = out.getvalue().splitlines()
    assert [re.match(r"train step (\d+)/10", line).group(1) for line in lines[:3]] == ["4", "8", "10"]  # type: ignore[union-attr]
    assert "loss 0.25 | lr 3.00e-04 | tau 0.996 | img/s " in lines[0]
    assert "eta " in lines[0] and "eta " not in lines[2]
    assert lines[3] == "epoch 0 done"


def test_resumed_progress_counts_from_initial() -> None:
    out = io.StringIO()
    progress = ProgressReporter(6, stream=out, log_every=2, initial=4)
    progress.update(loss=0.5)
    assert out.getvalue() == ""
    progress.update(loss=0.5)
    assert out.getvalue().startswith("step 6/6 (100%) | loss 0.5")


def test_disabled_reporter_is_silent() -> None:
    out = _Tty()
    progress = ProgressReporter(3, stream=out, log_every=1, enabled=False)
    for _ in range(3):
        progress.update(samples=8, loss=1.0)
    progress.write("hello")
    progress.close()
    assert out.getvalue() == ""


def test_tty_uses_a_tqdm_bar_with_postfix() -> None:
    out = _Tty()
    with ProgressReporter(3, desc="train", stream=out, log_every=1) as progress:
        for _ in range(3):
            progress.update(samples=8, loss=0.5, rate=12.0)
    text = out.getvalue()
    assert "\r" in text and "train" in text and "loss=0.5, rate=12" in text
    assert "step 3/3" not in text  # the plain-line format is not used on a terminal


def test_format_metrics() -> None:
    assert (
        format_metrics({"a": 1234567.0, "b": float("nan"), "c": "x", "d": 0.0})
        == "a 1.23e+06 | b nan | c x | d 0"
    )
