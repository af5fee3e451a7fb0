"""A run's output folder ``runs/<name>/``: config, metrics logs, summary and checkpoint.

Layout::

    runs/<name>/
        config.yaml, config.json   the resolved config (the YAML loads back as a preset: --config <it>)
        metrics.jsonl              one JSON object per record: the source of truth
        metrics.csv                the same records as a table, for spreadsheets
        summary.json               final metrics, wall time, throughput, ...
        last.pt                    the latest checkpoint (atomic writes, weights_only loads)
        *.png                      plots

``metrics.csv`` has one column per key ever logged. When a record brings a new key, the CSV is rewritten from
``metrics.jsonl`` with the widened header (earlier rows get empty cells), so the file is always one
consistent table; nested dicts become dotted columns and lists (e.g. spectra) stay in the JSONL only.
All writers are no-ops when ``enabled`` is false, so non-zero DDP ranks can call them unconditionally.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write
from .checkpoint import load_checkpoint, save_checkpoint
from .config import config_to_dict, dump_config

__all__ = ["MetricsLogger", "RunDir", "jsonable", "read_jsonl", "write_text_atomic"]


def jsonable(value: Any) -> Any:
    """Converts tensors, NumPy values, paths and dataclasses to plain JSON values (non-finite floats kept).

    Examples:
        >>> jsonable({"a": torch.tensor(1.5), "b": np.arange(2), "c": (1, 2)})
        {'a': 1.5, 'b': [0, 1], 'c': [1, 2]}
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 and value.ndim == 0 else value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} ({value!r}) in a metrics record or summary")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes ``text`` to ``path`` through a temporary file and ``os.replace`` (readers never see half; see
    :func:`common.atomic.atomic_write`)."""
    path = Path(path)
    with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Reads a JSONL file (``[]`` if it does not exist); a torn last line from a crash is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return records


def _flat_row(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            row.update(_flat_row(value, name + "."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            row[name] = value
    return row


class MetricsLogger:
    """Appends records to ``metrics.jsonl`` and ``metrics.csv`` (see the module docstring for the CSV rules).

    Args:
        jsonl_path: The JSONL file (appended to if it exists, e.g. when resuming).
        csv_path: The CSV file kept in step with it.
        enabled: Write at all (false on non-zero ranks).
    """

    def __init__(self, jsonl_path: str | Path, csv_path: str | Path, *, enabled: bool = True) -> None:
        self.jsonl_path = Path(jsonl_path)
        self.csv_path = Path(csv_path)
        self.enabled = enabled
        self._columns: list[str] = []
        for record in read_jsonl(self.jsonl_path):
            self._add_columns(_flat_row(record))

    def _add_columns(self, row: Mapping[str, Any]) -> bool:
        new = [k for k in row if k not in self._columns]
        self._columns.extend(new)
        return bool(new)

    def log(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Appends one record (values as in :func:`jsonable`) and returns its plain form."""
        plain: dict[str, Any] = jsonable(dict(record))
        if not self.enabled:
            return plain
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        with self.jsonl_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(plain) + "\n")
        row = _flat_row(plain)
        if self._add_columns(row) or not self.csv_path.is_file():
            self._rewrite_csv()
        else:
            with self.csv_path.open("a", encoding="utf-8", newline="") as handle:
                csv.DictWriter(handle, fieldnames=self._columns).writerow(row)
        return plain

    def records(self) -> list[dict[str, Any]]:
        """All records logged so far."""
        return read_jsonl(self.jsonl_path)

    def truncate(self, keep: Callable[[dict[str, Any]], bool]) -> int:
        """Keeps only the records for which ``keep`` is true; returns how many were dropped.

        When resuming from a checkpoint, drop the records logged after it (e.g.
        ``keep=lambda r: r["step"] <= ckpt_step``), so a resumed run's logs equal an uninterrupted run's.
        """
        records = self.records()
        kept = [r for r in records if keep(r)]
        if self.enabled and len(kept) != len(records):
            write_text_atomic(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in kept))
            self._columns = []
            for record in kept:
                self._add_columns(_flat_row(record))
            self._rewrite_csv()
        return len(records) - len(kept)

    def _rewrite_csv(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self._columns)
        writer.writeheader()
        for record in read_jsonl(self.jsonl_path):
            writer.writerow(_flat_row(record))
        write_text_atomic(self.csv_path, buffer.getvalue())


class RunDir:
    """The output folder of one run.

    Args:
        path: The folder, e.g. ``runs/demo``; created (with parents) when ``enabled``.
        enabled: Write at all; pass ``is_main()`` so that only rank 0 writes.

    Examples:
        >>> import tempfile
        >>> run = RunDir(Path(tempfile.mkdtemp()) / "demo")
        >>> _ = run.log({"epoch": 0, "loss": 1.0}); _ = run.log({"epoch": 1, "loss": 0.5, "acc": 0.3})
        >>> run.metrics_csv.read_text().splitlines()
        ['epoch,loss,acc', '0,1.0,', '1,0.5,0.3']
    """

    CONFIG = "config.yaml"
    CHECKPOINT = "last.pt"

    def __init__(self, path: str | Path, *, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsLogger(self.metrics_jsonl, self.metrics_csv, enabled=enabled)

    @property
    def config_yaml(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_jsonl(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary_json(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    def file(self, name: str) -> Path:
        """A path inside the run folder, e.g. ``run.file("loss.png")``."""
        return self.path / name

    def save_config(self, cfg: Any) -> None:
        """Writes the resolved config dataclass as ``config.yaml`` and ``config.json``."""
        if self.enabled:
            dump_config(cfg, self.config_yaml)
            dump_config(cfg, self.path / "config.json")

    def log(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Appends a metrics record; see :class:`MetricsLogger`."""
        return self.metrics.log(record)

    def records(self) -> list[dict[str, Any]]:
        """All metrics records logged so far."""
        return self.metrics.records()

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Writes ``summary.json`` atomically (values as in :func:`jsonable`)."""
        if self.enabled:
            write_text_atomic(self.summary_json, json.dumps(jsonable(dict(summary)), indent=2) + "\n")

    def read_summary(self) -> dict[str, Any]:
        """Reads ``summary.json``.

        Raises:
            FileNotFoundError: The run has no summary (it did not finish).
        """
        if not self.summary_json.is_file():
            raise FileNotFoundError(f"no summary.json in '{self.path}' (did the run finish?)")
        data = json.loads(self.summary_json.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{self.summary_json} does not hold a JSON object")
        return data

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Saves ``last.pt`` atomically; see :func:`common.checkpoint.save_checkpoint`."""
        if self.enabled:
            save_checkpoint(state, self.checkpoint)

    def has_checkpoint(self) -> bool:
        return self.checkpoint.is_file()

    def load_checkpoint(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Loads ``last.pt`` with ``weights_only=True``.

        Raises:
            FileNotFoundError: No checkpoint in this run folder.
        """
        if not self.has_checkpoint():
            raise FileNotFoundError(f"no checkpoint '{self.CHECKPOINT}' in '{self.path}' to resume from")
        return load_checkpoint(self.checkpoint, map_location)
