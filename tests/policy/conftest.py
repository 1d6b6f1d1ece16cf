"""Every test of the policy core runs twice: on the gate's C parts, and on their fallbacks."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pytest

from proxy.native import index_of, schedule_of
from proxy.policy import gate


@pytest.fixture(scope="package", params=["native", "python"], autouse=True)
def gate_parts(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which parts the gate builds its index from in this run of the tests."""
    native = request.param == "native"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gate, "index_of", partial(index_of, native=native))
        patch.setattr(gate, "schedule_of", partial(schedule_of, native=native))
        yield request.param
