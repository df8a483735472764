"""Bad config, revisions, registries and models: each refused in one line, changing nothing (table in bad_input.py)."""

from __future__ import annotations

import pytest

from tests.bad_input import CASES, CONFIG_CASES, DATA_CASES, GOOD, HELD_OUT, TUNELOOP, check, ws  # noqa: F401 (ws is a fixture)

pytestmark = pytest.mark.skipif(TUNELOOP is None, reason="the tuneloop console script is not installed")


def test_the_table_is_large_enough():
    assert len(CASES) == len(CONFIG_CASES) + len(DATA_CASES) >= 60  # no name in both halves
    assert not any('"' in text for text, _ in GOOD + HELD_OUT)  # csv_text quotes without escaping


@pytest.mark.parametrize("name", list(CONFIG_CASES))
def test_bad_input_fails_in_one_line_and_changes_nothing(name, ws, tmp_path):
    check(name, ws, tmp_path)
