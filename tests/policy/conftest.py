"""Every test of the policy core runs twice: with the C index of exact meeting ids, and a dict."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pytest

from proxy.policy import gate
from proxy.strindex import index_of


@pytest.fixture(scope="package", params=["StrIndex", "dict"], autouse=True)
def exact_index(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which index the gate builds for exact meeting ids in this run of the tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gate, "index_of", partial(index_of, native=request.param == "StrIndex"))
        yield request.param
