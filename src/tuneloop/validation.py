"""Data validation before training: judge the train and held-out frames, row by row and as a whole.

Validation owns every rule about what a trainable dataset is: no empty split, every row decodable
with a text and a known label, at least two classes, the champion's label set, no text in both
splits, no conflicting labels, and (unless allowed) no repeated rows. Problems are values collected in
a `ValidationReport`; `raise_for_problems` turns a failing report into one `DataError` line.

Texts are compared after `normalize_text` (strip, lowercase, collapse whitespace), so "Hi  there"
and "hi there" count as the same example. Labels are compared exactly, because training uses the
label string as it is.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import pandas as pd

from tuneloop.errors import DataError

logger = logging.getLogger(__name__)

CHECKS = (
    "empty_dataset",
    "undecodable",
    "missing_text",
    "missing_label",
    "unknown_label",
    "single_class",
    "label_set_changed",
    "overlap",
    "conflicting_labels",
    "duplicate",
)
SPLITS = ("train", "held_out")
_SNIPPET = 40  # characters of a text quoted in a message: enough to find it, short enough for one line


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data.

    Attributes:
        check: the rule that failed, one of `CHECKS`.
        message: one line naming the row(s), the bad value and the fix.
        split: "train", "held_out", or "" for a dataset-level problem.
        row: 1-based record number in the source file, None for a dataset-level problem.
    """

    check: str
    message: str
    split: str
    row: int | None


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of `validate`: sizes, the train label set and every problem found."""

    source: str
    train_rows: int
    held_out_rows: int
    labels: list[str]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_dict(self) -> dict:
        """Return the report as JSON-serializable data, with a count per check."""
        counts: dict[str, int] = {}
        for problem in self.problems:
            counts[problem.check] = counts.get(problem.check, 0) + 1
        return {
            "source": self.source,
            "ok": self.ok,
            "train_rows": self.train_rows,
            "held_out_rows": self.held_out_rows,
            "labels": list(self.labels),
            "counts": counts,
            "problems": [asdict(problem) for problem in self.problems],
        }

    def summary(self, limit: int = 5) -> str:
        """Return one line: the problem count and the first `limit` messages.

        Args:
            limit: messages to show before "… and K more"; at least 1 is shown when there are problems.
        """
        if self.ok:
            return f"no problems in {self.source}"
        shown = self.problems[: max(limit, 1)]
        line = f"{len(self.problems)} problem(s) in {self.source}: " + "; ".join(p.message for p in shown)
        rest = len(self.problems) - len(shown)
        if rest:
            line += f", … and {rest} more (see the validation report)"
        return line


def normalize_text(texts: pd.Series) -> pd.Series:
    """Return texts stripped, lowercased and with runs of whitespace collapsed to one space."""
    return texts.astype(str).str.lower().str.split().str.join(" ")


def validate(
    train: pd.DataFrame,
    held_out: pd.DataFrame,
    *,
    source: str,
    allowed_labels: list[str] | None = None,
    champion_labels: list[str] | None = None,
    allow_duplicates: bool = False,
) -> ValidationReport:
    """Check the train and held-out frames and collect every problem.

    Args:
        train: normalized frame (see `tuneloop.tables`) the model trains on.
        held_out: normalized frame the model is judged on.
        source: where the data came from (e.g. "data/train.csv@1a2b3c4"), quoted in messages.
        allowed_labels: the configured label set (data.labels); None accepts any label.
        champion_labels: the current champion's label set; None when there is no champion.
        allow_duplicates: accept repeated (text, label) rows within a split.

    Returns:
        The report; `report.ok` is False when any problem was found.
    """
    train, held_out = _prepare(train), _prepare(held_out)
    labels = sorted(set(train.loc[train["has_label"], "label"]))
    if train.empty:
        message = (
            f"train split of {source} has no rows; check data.path and data.rev, "
            "add rows, or lower data.eval_fraction"
        )
        problems = [Problem("empty_dataset", message, "", None)]
        return _finish(source, train, held_out, labels, problems)

    problems = []
    if held_out.empty:
        message = (
            f"held_out split of {source} has no rows; add rows, raise data.eval_fraction, "
            "or check data.eval_path"
        )
        problems.append(Problem("empty_dataset", message, "", None))
    problems += _class_problems(labels, champion_labels)
    for split, frame in zip(SPLITS, (train, held_out)):
        problems += _row_problems(frame, split)
        problems += _label_problems(frame, split, labels, allowed_labels)
        problems += _repeat_problems(frame, split, allow_duplicates)
    problems += _overlap_problems(train, held_out)
    return _finish(source, train, held_out, labels, _ordered(problems))


def raise_for_problems(report: ValidationReport) -> None:
    """Raise when the report holds any problem.

    Raises:
        DataError: with `report.summary()` as its one-line message.
    """
    if not report.ok:
        raise DataError(report.summary())


def _prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the columns every check reads: has_text, has_label and the normalized text."""
    frame = frame.reset_index(drop=True).copy()
    frame["has_text"] = _present(frame["text"])
    frame["has_label"] = _present(frame["label"])
    frame["undecodable"] = frame["undecodable"].fillna(False).astype(bool)
    frame["norm"] = normalize_text(frame["text"]).where(frame["has_text"])
    return frame


def _present(values: pd.Series) -> pd.Series:
    return values.notna() & values.astype(str).str.strip().ne("")


def _finish(source, train, held_out, labels, problems) -> ValidationReport:
    report = ValidationReport(source, len(train), len(held_out), labels, problems)
    counts = report.to_dict()["counts"]
    # Problems reach the user as the DataError raised from this report; logging them too would
    # print them twice on the CLI, so only a clean result is logged at INFO.
    logger.log(
        logging.INFO if report.ok else logging.DEBUG,
        "validated %s: %d train rows, %d held-out rows, %d labels, %d problem(s) %s",
        source, report.train_rows, report.held_out_rows, len(labels), len(problems), counts or "",
    )
    return report


def _ordered(problems: list[Problem]) -> list[Problem]:
    """Dataset-level problems first (they explain the rest), then by split, row and check."""
    def key(problem: Problem) -> tuple:
        if problem.row is None:
            return (0, 0, 0, CHECKS.index(problem.check))
        return (1, SPLITS.index(problem.split), problem.row, CHECKS.index(problem.check))

    return sorted(problems, key=key)


def _class_problems(labels: list[str], champion_labels: list[str] | None) -> list[Problem]:
    problems = []
    if len(labels) < 2:
        found = f"only the label {labels[0]!r}" if labels else "no labels"
        message = f"train split has {found}; classification needs at least two labels, so add rows of another class"
        problems.append(Problem("single_class", message, "", None))
    if champion_labels is not None and set(labels) != set(champion_labels):
        added = sorted(set(labels) - set(champion_labels))
        removed = sorted(set(champion_labels) - set(labels))
        message = (
            f"train label set differs from the champion's (added {added}, removed {removed}); "
            "relabel to the champion's label set or register under a new registry.model_name"
        )
        problems.append(Problem("label_set_changed", message, "", None))
    return problems


def _row_problems(frame: pd.DataFrame, split: str) -> list[Problem]:
    """Undecodable bytes, missing text, missing label: one problem per row and check."""
    checks = (
        ("undecodable", frame["undecodable"], "bytes that are not UTF-8; re-save the file as UTF-8"),
        ("missing_text", ~frame["has_text"], "text is empty; fill in the text or remove the row"),
        ("missing_label", ~frame["has_label"], "label is empty; label the row or remove it"),
    )
    problems = []
    for check, mask, what in checks:
        for row in frame.loc[mask, "row"]:
            problems.append(Problem(check, f"row {row} ({split}): {what}", split, int(row)))
    return problems


def _label_problems(
    frame: pd.DataFrame, split: str, train_labels: list[str], allowed_labels: list[str] | None
) -> list[Problem]:
    """Labels outside data.labels, and held-out labels the trained model could never predict."""
    labelled = frame[frame["has_label"]]
    problems = []
    if allowed_labels is not None:
        allowed = sorted(set(allowed_labels))
        outside = labelled[~labelled["label"].isin(allowed)]
        for row, label in zip(outside["row"], outside["label"]):
            message = (
                f"row {row} ({split}): label {label!r} is not in the allowed labels {allowed}; "
                "fix the row or add the label to data.labels"
            )
            problems.append(Problem("unknown_label", message, split, int(row)))
        labelled = labelled[labelled["label"].isin(allowed)]
    if split == "held_out":
        unseen = labelled[~labelled["label"].isin(train_labels)]
        for row, label in zip(unseen["row"], unseen["label"]):
            message = (
                f"row {row} ({split}): label {label!r} does not occur in the train split, so the model "
                "cannot predict it; add train rows with this label or fix the row"
            )
            problems.append(Problem("unknown_label", message, split, int(row)))
    return problems


def _repeat_problems(frame: pd.DataFrame, split: str, allow_duplicates: bool) -> list[Problem]:
    """Same normalized text repeated in a split: a conflict when labels differ, else a duplicate."""
    rows = frame[frame["has_text"] & frame["has_label"]]
    repeated = rows[rows.duplicated("norm", keep=False)]
    if repeated.empty:
        return []
    groups = repeated.groupby("norm", sort=False)
    first_row = groups["row"].transform("first")
    first_label = groups["label"].transform("first")
    conflicting = groups["label"].transform("nunique") > 1
    extra = repeated["row"] != first_row
    problems = []
    for idx in repeated.index[extra & conflicting]:
        row, label, text = repeated.at[idx, "row"], repeated.at[idx, "label"], repeated.at[idx, "text"]
        message = (
            f"row {row} ({split}): text {_snippet(text)} is labelled {label!r} here and "
            f"{first_label[idx]!r} in row {first_row[idx]}; give the text one label and remove the extra rows"
        )
        problems.append(Problem("conflicting_labels", message, split, int(row)))
    if allow_duplicates:
        return problems
    for idx in repeated.index[extra & ~conflicting]:
        row, label, text = repeated.at[idx, "row"], repeated.at[idx, "label"], repeated.at[idx, "text"]
        message = (
            f"row {row} ({split}): duplicate of row {first_row[idx]} (text {_snippet(text)}, label {label!r}); "
            "remove the duplicates or set data.allow_duplicates: true"
        )
        problems.append(Problem("duplicate", message, split, int(row)))
    return problems


def _overlap_problems(train: pd.DataFrame, held_out: pd.DataFrame) -> list[Problem]:
    """Held-out texts also in train: the held-out score would reward memorizing them."""
    train_rows = train[train["has_text"]].drop_duplicates("norm").set_index("norm")["row"]
    shared = held_out[held_out["has_text"] & held_out["norm"].isin(train_rows.index)]
    problems = []
    for row, norm, text in zip(shared["row"], shared["norm"], shared["text"]):
        message = (
            f"row {row} (held_out): text {_snippet(text)} is also in train row {train_rows[norm]}; "
            "remove it from one of the splits"
        )
        problems.append(Problem("overlap", message, "held_out", int(row)))
    return problems


def _snippet(text: str) -> str:
    """Quote a text for a one-line message: repr escapes newlines, long texts are cut."""
    text = str(text)
    if len(text) > _SNIPPET:
        text = text[: _SNIPPET - 1] + "…"
    return repr(text)
