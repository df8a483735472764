"""The config tree's building blocks: the strict section base and the name types every section uses.

Kept apart from `config.py` so that the method registry (`methods.py`), which owns the method
sections, and the config tree, which unions them, can both import them without a cycle.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


class Strict(BaseModel):
    """A config section: unknown keys, coercions and non-finite numbers are refused."""

    # strict: `epochs: true` or `margin: "1.0"` is a typo to report, not a value to coerce;
    # NaN and infinity pass every range check by comparing false, so they are refused outright.
    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True, allow_inf_nan=False)


def filled(value: str) -> str:
    """Refuse an empty or blank name, or one holding an invisible character."""
    if not value.strip():
        raise PydanticCustomError("blank", "must not be empty")
    # control and format characters (newline, NUL, zero-width space) never belong in a name
    hidden = next((c for c in value if unicodedata.category(c) in ("Cc", "Cf")), None)
    if hidden is not None:
        raise PydanticCustomError("hidden", "holds the invisible character {char}", {"char": repr(hidden)})
    return value


def unique(values: list[str]) -> list[str]:
    """Refuse a list that names something twice."""
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise PydanticCustomError("repeated", "lists {repeated} more than once", {"repeated": repeated})
    return values


# A string that names something (a column, a file, a module, a label): never empty or blank.
Name = Annotated[str, AfterValidator(filled)]
Names = Annotated[list[Name], AfterValidator(unique)]
