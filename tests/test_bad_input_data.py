"""Bad data, in a run and in `tuneloop data add`: each refused in one line, changing nothing (table in bad_input.py)."""

from __future__ import annotations

import pytest

from tests.bad_input import DATA_CASES, TUNELOOP, check, ws  # noqa: F401 (ws is a fixture)

pytestmark = pytest.mark.skipif(TUNELOOP is None, reason="the tuneloop console script is not installed")


@pytest.mark.parametrize("name", list(DATA_CASES))
def test_bad_data_fails_in_one_line_and_changes_nothing(name, ws, tmp_path):
    check(name, ws, tmp_path)
