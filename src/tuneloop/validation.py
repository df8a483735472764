"""Data validation before training: judge the train and held-out frames, row by row and as a whole.

Validation owns every rule about what a trainable dataset is: no empty split, enough train rows to
carve the dev split, every row decodable and free of control characters, a text and a known label
as plain strings of sane size, at least two classes, the champion's label set, no text in both
splits, no conflicting labels, and (unless allowed) no repeated rows. Problems are values collected
in a `ValidationReport`; `raise_for_problems` turns a failing report into one `DataError` line.

Texts are compared after `normalize_text` (strip, lowercase, collapse whitespace), so "Hi  there"
and "hi there" count as the same example. Labels are compared exactly, because training uses the
label string as it is.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable

import pandas as pd

from tuneloop.errors import DataError

logger = logging.getLogger(__name__)

CHECKS = (
    "empty_dataset", "too_few_rows",
    "undecodable", "invalid_unicode", "not_a_string", "control_characters", "too_long",
    "missing_text", "missing_label", "missing_slice", "label_whitespace", "unknown_label",
    "single_class", "label_set_changed", "target_too_long",
    "overlap", "near_duplicate", "conflicting_labels", "duplicate",
)
SPLITS = ("train", "held_out", "file")  # "file": one data file judged on its own, before `data add`
# model.max_length is at most 8192 tokens, about 33k characters of English at ~4 per token, so no
# model reads further; 100k leaves room for long documents, and a field beyond it is most often an
# unbalanced quote that merged the rest of a CSV file into one cell.
MAX_TEXT_CHARS = 100_000
# A label is a class name (the model's id2label entry, a metric key); 200 characters is a sentence,
# so a longer one is a text in the label column.
MAX_LABEL_CHARS = 200
_LONG_FIX = {
    "text": "shorten or split the text (an unbalanced quote can also merge many rows into one field)",
    "label": "a label is a class name; check data.label_column",
}
# C0 controls and DEL, except tab, newline and carriage return (ordinary in texts and CSV files):
# NUL and friends are invisible in reviews, break tokenizers and downstream C string handling.
# C0 (but tab, newline, carriage return), DEL, C1 and the zero-width/bidi format characters: none is
# text a person wrote, and each changes what a tokenizer sees without showing on screen.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")
_LABEL_CONTROL = re.compile(_CONTROL.pattern[:-1] + "\t\n\r]")  # a label is one line of printable text
_SNIPPET = 40  # characters of a text quoted in a message: enough to find it, short enough for one line


@dataclass(frozen=True)
class Rules:
    """What a row's target is, by model.task: a class label, or a text the model learns to write.

    For a generative task (seq2seq: source/target, causal_lm: prompt/response) the target is held
    to the rules of a text, and the class checks (single class, label set, unknown labels,
    whitespace around a label) and conflicting targets (one source may have several good
    summaries) do not apply. With `count_tokens`, a target over `max_target_tokens` tokens (the end
    token included) is a problem: training would teach the model to stop mid-sentence.

    Attributes:
        generative: whether the target is a text.
        roles: what the input and the target are called in messages (text/label, source/target ...).
        count_tokens: each target's length in label tokens, end token included (`tasks.target_lengths`), or None.
        max_target_tokens: generation.max_new_tokens.
    """

    generative: bool = False
    roles: tuple[str, str] = ("text", "label")
    count_tokens: Callable[[list[str]], list[int]] | None = None
    max_target_tokens: int = 0


CLASSIFICATION = Rules()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data.

    Attributes:
        check: the rule that failed, one of `CHECKS`.
        message: one line naming the row(s), the bad value and the fix.
        split: one of `SPLITS`, or "" for a dataset-level problem.
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
        counts = dict(Counter(problem.check for problem in self.problems))
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
    return texts.fillna("").astype(str).str.lower().str.split().str.join(" ")


def validate(
    train: pd.DataFrame,
    held_out: pd.DataFrame,
    *,
    source: str,
    allowed_labels: list[str] | None = None,
    champion_labels: list[str] | None = None,
    allow_duplicates: bool = False,
    min_train_rows: int = 2,
    rules: Rules = CLASSIFICATION,
) -> ValidationReport:
    """Check the train and held-out frames and collect every problem.

    Args:
        train: normalized frame (see `tuneloop.tables`) the model trains on.
        held_out: normalized frame the model is judged on.
        source: where the data came from (e.g. "data/train.csv@1a2b3c4"), quoted in messages.
        allowed_labels: the configured label set (data.labels); None accepts any label.
        champion_labels: the current champion's label set; None when there is no champion.
        allow_duplicates: accept repeated (text, label) rows within a split.
        min_train_rows: fewest train rows training can use; it sets aside max(1, round(n *
            train.dev_fraction)) rows for early stopping and needs one row left to fit, so 2 for
            every dev_fraction below 0.5.
        rules: what the target is (model.task's rules).

    Returns:
        The report; `report.ok` is False when any problem was found.
    """
    train, held_out = _prepare(train), _prepare(held_out)
    labels = sorted(set(train.loc[train["has_label"], "label"]))
    problems = _size_problems(len(train), len(held_out), source, min_train_rows)
    if train.empty:  # nothing else can be judged
        return _finish(source, train, held_out, labels, problems)
    if rules.generative:
        labels = []
    else:
        problems += _class_problems(labels, champion_labels)
    for split, frame in zip(SPLITS, (train, held_out)):
        problems += _frame_problems(frame, split, labels, allowed_labels, allow_duplicates, rules)
    problems += _overlap_problems(train, held_out, rules)
    return _finish(source, train, held_out, labels, _ordered(problems))


def validate_file(
    frame: pd.DataFrame, *, source: str, allowed_labels: list[str] | None = None, allow_duplicates: bool = False,
    rules: Rules = CLASSIFICATION,
) -> ValidationReport:
    """Check one data file on its own, before it is added: rows, labels, repeats (split "file").

    Class, champion and overlap checks wait for `validate`: a frozen eval file may hold one class.

    Args:
        frame: normalized frame of the whole file.
        source: the file, quoted in messages.
        allowed_labels: the configured label set (data.labels); None accepts any label.
        allow_duplicates: accept repeated (text, label) rows.
        rules: what the target is (model.task's rules).
    """
    frame = _prepare(frame)
    labels = [] if rules.generative else sorted(set(frame.loc[frame["has_label"], "label"]))
    if frame.empty:
        problems = [Problem("empty_dataset", f"{source} has no rows; add rows below the header", "", None)]
    else:
        problems = _ordered(_frame_problems(frame, "file", labels, allowed_labels, allow_duplicates, rules))
    return _finish(source, frame, frame.iloc[:0], labels, problems)


def merge_capped(full: ValidationReport, capped: ValidationReport, caps: str) -> ValidationReport:
    """Merge the report on all rows with the one on the capped rows that training will use.

    A duplicate beyond the cap is still a duplicate, so row problems come from all rows; the capped
    report adds what only the cap causes (one class left, a held-out label no longer in train),
    each saying so. A problem both reports hold is kept once, as the full report words it.

    Args:
        full: report on the uncapped train and held-out frames.
        capped: report on the frames after data.max_train_rows / data.max_eval_rows.
        caps: the caps applied, quoted in messages (e.g. "data.max_train_rows: 50").

    Returns:
        A report with the capped sizes and labels and the merged problems.
    """
    rows = {(p.check, p.split, p.row) for p in full.problems if p.row is not None}
    checks = {p.check for p in full.problems if p.row is None}
    extra = [
        Problem(p.check, f"{p.message} (with {caps}; raise or unset the cap)", p.split, p.row)
        for p in capped.problems
        if (p.check not in checks if p.row is None else (p.check, p.split, p.row) not in rows)
    ]
    return ValidationReport(
        full.source, capped.train_rows, capped.held_out_rows, capped.labels, _ordered(full.problems + extra)
    )


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
    frame["malformed"] = frame["malformed"].fillna("").astype(str)
    frame["norm"] = normalize_text(frame["text"]).where(frame["has_text"])
    return frame


def _present(values: pd.Series) -> pd.Series:
    """Present: not missing, and something visible once whitespace and invisible characters are removed."""
    return values.notna() & values.astype(str).str.replace(_CONTROL.pattern, "", regex=True).str.strip().ne("")


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


def _size_problems(train_rows: int, held_out_rows: int, source: str, min_train_rows: int) -> list[Problem]:
    """An empty split, or too few train rows to set the dev split aside."""
    if not train_rows:
        message = f"train split of {source} has no rows; check data.path and data.rev, add rows, or lower data.eval_fraction"
        return [Problem("empty_dataset", message, "", None)]
    problems = []
    if not held_out_rows:
        message = f"held_out split of {source} has no rows; add rows, raise data.eval_fraction, or check data.eval_path"
        problems.append(Problem("empty_dataset", message, "", None))
    if train_rows < min_train_rows:
        message = (
            f"train split of {source} has {train_rows} row(s); training sets aside a dev split and needs "
            f"at least {min_train_rows}, so add rows or lower data.eval_fraction"
        )
        problems.append(Problem("too_few_rows", message, "", None))
    return problems


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


def _frame_problems(
    frame: pd.DataFrame, split: str, train_labels: list[str], allowed_labels: list[str] | None, allow_duplicates: bool,
    rules: Rules = CLASSIFICATION,
) -> list[Problem]:
    """Every check that judges one split on its own."""
    if rules.generative:
        return [
            *_row_problems(frame, split, rules),
            *_malformed_problems(frame, split),
            *_value_problems(frame, split, rules),
            *_target_length_problems(frame, split, rules),
            *_repeat_problems(frame, split, allow_duplicates, rules),
        ]
    return [
        *_row_problems(frame, split),
        *_malformed_problems(frame, split),
        *_value_problems(frame, split),
        *_label_problems(frame, split, train_labels, allowed_labels),
        *_repeat_problems(frame, split, allow_duplicates),
    ]


def _target_length_problems(frame: pd.DataFrame, split: str, rules: Rules) -> list[Problem]:
    """Targets longer than the model may write (generation.max_new_tokens, with the end token)."""
    if rules.count_tokens is None:
        return []
    present = frame[frame["has_label"]]
    counts = rules.count_tokens(present["label"].astype(str).tolist())
    target = rules.roles[1]
    return [
        Problem("target_too_long", f"row {row} ({split}): {target} is {count} tokens with the end token, over "
                f"generation.max_new_tokens={rules.max_target_tokens}, so training would cut it off; raise "
                f"generation.max_new_tokens or shorten the {target}", split, int(row))
        for row, count in zip(present["row"], counts) if count > rules.max_target_tokens
    ]


def _row_problems(frame: pd.DataFrame, split: str, rules: Rules = CLASSIFICATION) -> list[Problem]:
    """Undecodable bytes, missing text, missing label, and a missing slice on a held-out row (the
    gate's per-slice checks read it there): one problem per row and check."""
    # a JSON array or object is reported as not_a_string, not also as an empty value
    nested = {field: frame["malformed"].str.contains(f"{field}:(?:array|object)") for field in ("text", "label", "slice")}
    text, label = rules.roles
    checks = [
        ("undecodable", frame["undecodable"], "bytes that are not UTF-8; re-save the file as UTF-8"),
        ("missing_text", ~frame["has_text"] & ~nested["text"], f"{text} is empty; fill in the {text} or remove the row"),
        ("missing_label", ~frame["has_label"] & ~nested["label"],
         f"{label} is empty; fill in the {label} or remove the row" if rules.generative else
         "label is empty; label the row or remove it"),
    ]
    if "slice" in frame and split == "held_out":
        checks.append(("missing_slice", ~_present(frame["slice"]) & ~nested["slice"],
                       "slice is empty (data.slice_column); name the row's slice or remove the row"))
    problems = []
    for check, mask, what in checks:
        for row in frame.loc[mask, "row"]:
            problems.append(Problem(check, f"row {row} ({split}): {what}", split, int(row)))
    return problems


def _malformed_problems(frame: pd.DataFrame, split: str) -> list[Problem]:
    """What the parser could not keep as a string: JSON arrays and objects, lone surrogates."""
    problems = []
    for row, malformed in zip(frame["row"], frame["malformed"]):
        for item in filter(None, malformed.split(",")):
            field, kind = item.split(":", 1)
            if kind in ("array", "object"):
                message = f"row {row} ({split}): {field} is a JSON {kind}, not a string; write the {field} as a JSON string"
                problems.append(Problem("not_a_string", message, split, int(row)))
            else:  # the escape of a lone surrogate, e.g. \ud800
                message = (
                    f"row {row} ({split}): {field} holds the lone surrogate '{kind}', which is not valid Unicode "
                    f"and cannot be encoded as UTF-8; remove the '{kind}' escape or complete its surrogate pair"
                )
                problems.append(Problem("invalid_unicode", message, split, int(row)))
    return problems


def _value_problems(frame: pd.DataFrame, split: str, rules: Rules = CLASSIFICATION) -> list[Problem]:
    """Control characters, oversized fields, and labels with whitespace around them (a generative
    task's target is a text, held to the text's rules)."""
    problems = []
    label_is_text = rules.generative
    for field, limit in (("text", MAX_TEXT_CHARS), ("label", MAX_TEXT_CHARS if label_is_text else MAX_LABEL_CHARS)):
        values = frame[field].fillna("").astype(str)
        as_text = field == "text" or label_is_text
        name = rules.roles[0] if field == "text" else rules.roles[1]
        pattern = _CONTROL if as_text else _LABEL_CONTROL
        flagged = values.str.contains(pattern.pattern)
        if field == "label":  # a blank label is reported as missing, not for the tab in it
            flagged &= frame["has_label"]
        for row, value in zip(frame.loc[flagged, "row"], values[flagged]):
            found = pattern.search(value)
            allowed = "tab, newline and carriage return are the only ones allowed" if as_text else "labels are one line"
            message = (
                f"row {row} ({split}): {name} holds the control character {found.group()!r} at character "
                f"{found.start() + 1}; delete it ({allowed})"
            )
            problems.append(Problem("control_characters", message, split, int(row)))
        lengths = values.str.len()
        for row, length in zip(frame.loc[lengths > limit, "row"], lengths[lengths > limit]):
            message = f"row {row} ({split}): {name} is {length:,} characters, over the limit of {limit:,}; "
            message += _LONG_FIX["text" if as_text else "label"]
            problems.append(Problem("too_long", message, split, int(row)))
    if label_is_text:
        return problems
    labels = frame["label"].fillna("").astype(str)
    padded = frame["has_label"] & labels.ne(labels.str.strip())
    for row, label in zip(frame.loc[padded, "row"], labels[padded]):
        message = (
            f"row {row} ({split}): label {_snippet(label)} has whitespace around it, so it would be a class "
            f"apart from {_snippet(label.strip())}; strip the label"
        )
        problems.append(Problem("label_whitespace", message, split, int(row)))
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


def _repeat_problems(frame: pd.DataFrame, split: str, allow_duplicates: bool, rules: Rules = CLASSIFICATION) -> list[Problem]:
    """Same normalized text repeated in a split: a conflict when labels differ, else a duplicate.

    A generative task's repeats are rows with the same input and the same target; one input with
    several targets is several good answers, not a conflict.
    """
    rows = frame[frame["has_text"] & frame["has_label"]]
    if rules.generative:
        rows = rows.assign(norm=rows["norm"] + "\x00" + normalize_text(rows["label"]))
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
        text_role, label_role = rules.roles
        shown = _snippet(label) if rules.generative else repr(label)
        message = (
            f"row {row} ({split}): duplicate of row {first_row[idx]} ({text_role} {_snippet(text)}, {label_role} {shown}); "
            "remove the duplicates or set data.allow_duplicates: true"
        )
        problems.append(Problem("duplicate", message, split, int(row)))
    return problems


def _overlap_problems(train: pd.DataFrame, held_out: pd.DataFrame, rules: Rules = CLASSIFICATION) -> list[Problem]:
    """Held-out inputs also in train: the held-out score would reward memorizing them."""
    train_rows = train[train["has_text"]].drop_duplicates("norm").set_index("norm")["row"]
    shared = held_out[held_out["has_text"] & held_out["norm"].isin(train_rows.index)]
    problems = []
    for row, norm, text in zip(shared["row"], shared["norm"], shared["text"]):
        message = (
            f"row {row} (held_out): {rules.roles[0]} {_snippet(text)} is also in train row {train_rows[norm]}; "
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
