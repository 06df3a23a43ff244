"""Fixtures of the end-to-end tests: the session's test bed and one scenario per test.

Without the binaries the tests are skipped, saying how to get them; under CI (``CI=true``) a
missing binary is an error instead, so that CI never passes by skipping them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import assets
from tests.e2e.harness import Scenario, Session


@pytest.fixture(scope="session")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    why = assets.missing()
    if why is not None:
        if assets.in_ci():
            pytest.fail(f"CI=true and {why}", pytrace=False)
        pytest.skip(why)
    folder: Path = tmp_path_factory.mktemp("e2e")
    with Session.running(folder) as session:
        yield session


@pytest.fixture
def scenario(e2e: Session, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    """A fresh namespace and node set, with the default extender policy and scheduler running."""
    e2e.ensure()
    sc = Scenario(e2e, request.node.name.removeprefix("test_"))
    try:
        yield sc
    finally:
        sc.cleanup()
