"""The config tree's building blocks: the strict section base and the name types every section uses.

Kept apart from `config.py` so that the method registry (`methods.py`), which owns the method
sections, and the config tree, which unions them, can both import them without a cycle.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict
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


SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> int | None:
    """Seconds in a duration written as 90s, 15m, 6h or 2d; None when the text is not one."""
    found = re.fullmatch(r"(\d+)([smhd])", text.strip())
    return None if found is None else int(found[1]) * SECONDS[found[2]]


def duration(least: str, most: str) -> BeforeValidator:
    """Accept whole seconds or text such as 90s, 15m, 6h, 2d, within [least, most]; store seconds."""

    def seconds(value: Any) -> Any:
        if isinstance(value, str):
            value = duration_seconds(value)
            if value is None:
                raise PydanticCustomError("duration", "must be whole seconds or a duration such as 90s, 15m, 6h or 2d")
        # bool is an int to Python; leave it to the strict int check, which refuses it
        if isinstance(value, int) and not isinstance(value, bool) and not low <= value <= high:
            raise PydanticCustomError("duration_range", "must be from {least} to {most}", {"least": least, "most": most})
        return value

    low, high = (int(text[:-1]) * SECONDS[text[-1]] for text in (least, most))
    return BeforeValidator(seconds, json_schema_input_type=int | str)
