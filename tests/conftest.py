"""Test configuration: hypothesis profiles and shared fixtures.

CI sets ``CI=true``, which makes hypothesis load its built-in ``ci`` profile (derandomized, no deadline).
Locally the ``dev`` profile below applies: fewer examples, no deadline (the first call of a torch op can be
slow), so that the suite stays quick on a laptop.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
from hypothesis import HealthCheck, settings

from jepa_rate.numerics import _host

settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
if not os.environ.get("CI"):
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# The tests use small tensors, for which a second intra-op thread only adds synchronization (and, on a
# loaded 2-core machine, makes small LAPACK calls orders of magnitude slower). One thread keeps the suite
# fast and its timings stable; multi-process tests start their own interpreters.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture
def free_port() -> int:
    """A TCP port on the loopback interface that was free a moment ago, for a test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["host", "device"])
def branches(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with the rare branches chosen on the host (the CPU default) and on the device.

    The device route is what CUDA and ``torch.compile`` use; forcing it here tests it on CPU.
    """
    if request.param == "device":
        monkeypatch.setattr(_host, "decided_on_host", lambda x: False)
    return str(request.param)
