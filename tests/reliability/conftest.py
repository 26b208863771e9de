"""Fixtures of the reliability suite, and the summary line ``make test`` prints at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

import reliability_tally


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A folder holding a user's files, which no bad input may touch."""
    (tmp_path / "thesis.txt").write_text("three years of work\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return tmp_path


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ANN001 - pytest hook
    if reliability_tally.RESULTS:
        terminalreporter.write_sep("=", "reliability")
        terminalreporter.write_line(reliability_tally.summary())
