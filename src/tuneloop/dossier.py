"""The promotion dossier: one self-contained HTML page and its markdown twin per gate decision.

Rendering is pure (stdlib + pandas): the caller hands over a JSON-like evidence dict and gets two
files. Both are rendered from one list of sections, so the twin holds the same tables and words.
The HTML has no external CSS, JS or fonts and escapes every string, since texts are user data.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tuneloop.errors import DataError

HTML_FILE, MARKDOWN_FILE = "dossier.html", "dossier.md"
MAX_FLIPS = 20  # per direction: enough to see a pattern, few enough to read in a minute
MAX_TEXT = 300  # characters shown per text; longer ones end in "…"
NONE = "—"
_DIAG = ' class="diag"'
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|&])")  # CommonMark escapes; "<" keeps raw HTML inert
_CSS = (
    "body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.4em 0 1em}"
    "th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top;"
    "max-width:40em;overflow-wrap:anywhere}"
    "th{background:#f3f3f3}caption{text-align:left;font-weight:bold;padding:.2em 0}"
    ".matrix td{text-align:right}.matrix td.diag{font-weight:bold;background:#e8f3e8}"
    ".pair{display:flex;gap:2em;flex-wrap:wrap}"
    ".verdict{display:inline-block;font-size:1.4em;font-weight:bold;padding:.3em .8em;border-radius:4px}"
    ".promoted{background:#e3f4e3;color:#14561b}.rejected{background:#fbe3e3;color:#8a1010}"
    ".manual{background:#fff2cc;color:#6b4e00}"
)


@dataclass(frozen=True)
class Table:
    """A table both renderers draw; `diagonal` marks a confusion matrix (first column = truth)."""

    headers: list[str]
    rows: list[list[str]]
    title: str = ""
    diagonal: bool = False


Block = tuple[str, Any]  # ("p", str) | ("ul", [str]) | ("table", Table) | ("pair", [Table]) | ("verdict", str)


@dataclass(frozen=True)
class Section:
    """One titled part of the dossier; `key` is its HTML id."""

    key: str
    title: str
    blocks: list[Block]


def data_diff(old: pd.DataFrame | None, new: pd.DataFrame, samples: int = 5) -> dict:
    """Compare two labelled frames row by row, matching rows by their exact text.

    Args:
        old: the previous revision's rows (columns text, label), or None when there is none.
        new: this revision's rows.
        samples: examples kept per kind of change, in the order texts first appear (removed: in old).

    Returns:
        {"old_rows", "new_rows", "added", "removed", "relabelled"}; each change is {"count", "samples"}
        and counts distinct texts. A text carrying several labels in one frame shows them joined by ", ".

    Raises:
        DataError: when a frame lacks the text or label column.
    """
    before = _labels_by_text(old) if old is not None else {}
    after = _labels_by_text(new)
    added = [{"text": t, "label": after[t]} for t in after if t not in before]
    removed = [{"text": t, "label": before[t]} for t in before if t not in after]
    relabelled = [{"text": t, "old_label": before[t], "new_label": after[t]}
                  for t in after if t in before and before[t] != after[t]]
    return {
        "old_rows": None if old is None else len(old), "new_rows": len(new),
        **{name: {"count": len(found), "samples": found[:samples]}
           for name, found in (("added", added), ("removed", removed), ("relabelled", relabelled))},
    }


def _labels_by_text(frame: pd.DataFrame) -> dict[str, str]:
    missing = {"text", "label"} - set(frame.columns)
    if missing:
        raise DataError(f"data_diff needs columns text and label; the frame lacks {sorted(missing)} "
                        f"(it has {list(frame.columns)})")
    labels: dict[str, set[str]] = {}
    for text, label in zip(frame["text"], frame["label"]):
        labels.setdefault(text, set()).add(str(label))
    return {text: ", ".join(sorted(found)) for text, found in labels.items()}


def config_diff(old: dict | None, new: dict) -> list[dict]:
    """List the settings that differ, as dotted keys ("train.learning_rate").

    Args:
        old: the champion's config as a nested dict, or None when there is none.
        new: the candidate's config.

    Returns:
        [{"key", "old", "new"}] sorted by key; a key absent on one side shows None there.
    """
    before, after = _flatten(old or {}), _flatten(new)
    return [{"key": key, "old": before.get(key), "new": after.get(key)}
            for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write(folder: Path, evidence: dict) -> tuple[Path, Path]:
    """Write dossier.html and dossier.md for one gate decision.

    Args:
        folder: where both files go; created when missing.
        evidence: the decision, both evaluation reports, held-out texts and diffs (see `sections`).

    Returns:
        The paths of the HTML page and of its markdown twin.

    Raises:
        DataError: when the two reports were not scored on the same held-out rows.
    """
    parts = sections(evidence)
    title = f"Promotion dossier: {evidence.get('model', '?')} {evidence.get('candidate_version') or ''}".strip()
    folder.mkdir(parents=True, exist_ok=True)
    html_path, md_path = folder / HTML_FILE, folder / MARKDOWN_FILE
    html_path.write_text(render_html(title, parts), encoding="utf-8")
    md_path.write_text(render_markdown(title, parts), encoding="utf-8")
    return html_path, md_path


def sections(evidence: dict) -> list[Section]:
    """Build the dossier's sections; comparison sections only when a champion exists.

    Reads model, candidate_version, champion_version, run, created; decision (passed, manual, policy,
    reasons, metric, stats, mcnemar, slices); candidate and champion reports (labels, confusion,
    per_class_f1, truth, predictions, rows); texts; ood; findings; data_diff; leaks; config_diff. Other keys are ignored.
    """
    decision, candidate, champion = evidence["decision"], evidence["candidate"], evidence.get("champion")
    if champion is not None and champion.get("task") != candidate.get("task"):  # another task: nothing compares
        champion = None
    if candidate.get("row_values"):  # a generative task: outputs, not classes
        parts = [_header(evidence), _metrics(decision, candidate, champion), _outputs(evidence.get("texts"), candidate, champion)]
    else:
        parts = [_header(evidence), _metrics(decision, candidate, champion), _matrices(candidate, champion),
                 _per_class(candidate, champion)]
    if champion is not None and not candidate.get("row_values"):
        parts.insert(2, _mcnemar(decision.get("mcnemar")))
        parts.extend(_flip_sections(evidence.get("texts"), candidate, champion))
    if decision.get("slices"):
        parts.append(_slices(decision["slices"]))
    if evidence.get("ood"):
        parts.append(_ood(evidence["ood"]))
    parts += [_training(evidence.get("findings")), _data(evidence.get("data_diff"), evidence.get("leaks")),
              _config(evidence.get("config_diff") or [])]
    return parts


def verdict(decision: dict) -> str:
    """Name the outcome; `manual` wins because the gate leaves such a candidate unpassed on purpose."""
    if decision.get("manual"):
        return "NEEDS MANUAL PROMOTION"
    return "PROMOTED" if decision["passed"] else "REJECTED"


def _header(evidence: dict) -> Section:
    decision = evidence["decision"]
    facts = [f"model: {evidence.get('model', NONE)}", f"candidate version: {evidence.get('candidate_version') or NONE}",
             f"champion version: {evidence.get('champion_version') or 'none'}",
             f"run: {evidence.get('run', NONE)}", f"created: {evidence.get('created', NONE)}",
             f"policy: {decision.get('policy', NONE)}", f"gate metric: {decision.get('metric', NONE)}"]
    blocks: list[Block] = [("verdict", verdict(decision)), ("ul", facts), ("p", "Reasons:"),
                           ("ul", list(decision.get("reasons", [])))]
    if evidence.get("champion") is None:
        blocks.append(("p", "No champion: this is the first candidate, so there is nothing to compare against."))
    return Section("verdict", "Verdict", blocks)


def _metrics(decision: dict, candidate: dict, champion: dict | None) -> Section:
    stats = decision.get("stats", {})
    if champion is None:
        rows = [[name, _score(s["candidate"])] for name, s in stats.items()]
        return Section("metrics", "Candidate scores", [("table", Table(["metric", "candidate"], rows))])
    rows = []
    for name, s in stats.items():
        low, high, margin = s.get("ci_low_points"), s.get("ci_high_points"), s["margin"]
        clears = NONE if low is None else ("yes" if low >= -margin else "no")
        ci = NONE if low is None or high is None else f"{_points(low)} to {_points(high)}"
        rows.append([name, _score(s["candidate"]), _score(s.get("champion")), _points(s.get("delta_points")),
                     ci, f"{margin:.2f}", clears])
    headers = ["metric", "candidate", "champion", "delta (points)", "95% CI of delta", "margin (points)",
               "CI low ≥ −margin"]
    rows_note = f"Held-out rows: {candidate.get('rows', NONE)}; the gate metric is {decision.get('metric', NONE)}."
    return Section("metrics", "Metrics", [("p", rows_note), ("table", Table(headers, rows))])


def _mcnemar(test: dict | None) -> Section:
    if test is None:
        return Section("mcnemar", "McNemar test", [("p", "Not computed.")])
    headers = ["b (only the candidate right)", "c (only the champion right)", "p-value"]
    table = Table(headers, [[str(test["b"]), str(test["c"]), f"{test['p_value']:.4g}"]])
    note = "Exact test on the held-out rows where exactly one model is right; reported, not gated."
    return Section("mcnemar", "McNemar test", [("p", note), ("table", table)])


def _matrices(candidate: dict, champion: dict | None) -> Section:
    reports = [("candidate", candidate)] + ([("champion", champion)] if champion is not None else [])
    labels = sorted(set().union(*(r["labels"] for _, r in reports)))
    tables = [_confusion(name, report, labels) for name, report in reports]
    return Section("confusion", "Confusion matrices (rows = truth, columns = predicted)", [("pair", tables)])


def _confusion(name: str, report: dict, labels: list[str]) -> Table:
    index = {label: i for i, label in enumerate(report["labels"])}
    matrix = report["confusion"]

    def cell(truth: str, predicted: str) -> str:
        known = truth in index and predicted in index
        return str(matrix[index[truth]][index[predicted]]) if known else "0"

    rows = [[truth] + [cell(truth, predicted) for predicted in labels] for truth in labels]
    return Table(["truth \\ predicted"] + labels, rows, title=name, diagonal=True)


def _per_class(candidate: dict, champion: dict | None) -> Section:
    cand = candidate.get("per_class_f1", {})
    if champion is None:
        rows = [[label, _score(cand[label])] for label in sorted(cand)]
        return Section("per-class", "Per-class F1", [("table", Table(["label", "candidate F1"], rows))])
    champ = champion.get("per_class_f1", {})
    rows = []
    for label in sorted(cand.keys() | champ.keys()):
        new, old = cand.get(label), champ.get(label)
        delta = None if new is None or old is None else 100 * (new - old)
        rows.append([label, _score(new), _score(old), _points(delta)])
    return Section("per-class", "Per-class F1 deltas",
                   [("table", Table(["label", "candidate F1", "champion F1", "delta (points)"], rows))])


def _flip_sections(texts: list[str] | None, candidate: dict, champion: dict) -> list[Section]:
    titles = {"fixed": "Fixed: champion wrong → candidate right", "broken": "Broken: champion right → candidate wrong"}
    rows = _aligned_rows(texts, candidate, champion)
    if rows is None:
        note = [("p", "Row-level predictions were not recorded, so flipped examples cannot be shown.")]
        return [Section(key, title, note) for key, title in titles.items()]
    flips: dict[str, list[list[str]]] = {"fixed": [], "broken": []}
    for text, truth, old, new in rows:
        if (old == truth) != (new == truth):
            flips["fixed" if new == truth else "broken"].append([_clip(text), truth, old, new])
    parts = []
    for key, title in titles.items():
        found = flips[key]
        shown = f"{len(found)} rows" + (f", showing the first {MAX_FLIPS}" if len(found) > MAX_FLIPS else "")
        table = Table(["text", "truth", "champion", "candidate"], found[:MAX_FLIPS])
        parts.append(Section(key, f"{title} ({shown})", [("table", table)] if found else [("p", "None.")]))
    return parts


def _outputs(texts: list[str] | None, candidate: dict, champion: dict | None) -> Section:
    """A generative task's rows: the input, the reference and each model's output with its ROUGE-L,
    the rows where the candidate lost most to the champion first (or its weakest rows, alone)."""
    if texts is None or len(texts) != len(candidate.get("truth", [])):
        return Section("outputs", "Outputs", [("p", "Row-level outputs were not recorded.")])
    ours = candidate["row_values"]["rougeL"]
    if champion is None:
        order = sorted(range(len(texts)), key=lambda i: ours[i])[:MAX_FLIPS]
        rows = [[_clip(texts[i]), _clip(candidate["truth"][i]), _clip(candidate["predictions"][i]), _score(ours[i])]
                for i in order]
        table = Table(["input", "reference", "candidate", "ROUGE-L"], rows)
        return Section("outputs", f"Weakest outputs (the {len(rows)} lowest ROUGE-L of {len(texts)} rows)", [("table", table)])
    theirs = champion["row_values"]["rougeL"]
    order = sorted(range(len(texts)), key=lambda i: ours[i] - theirs[i])[:MAX_FLIPS]
    rows = [[_clip(texts[i]), _clip(candidate["truth"][i]), _clip(champion["predictions"][i]), _clip(candidate["predictions"][i]),
             _score(theirs[i]), _score(ours[i])] for i in order]
    table = Table(["input", "reference", "champion", "candidate", "champion ROUGE-L", "candidate ROUGE-L"], rows)
    return Section("outputs", f"Largest ROUGE-L losses against the champion (first {len(rows)} of {len(texts)} rows)",
                   [("table", table)])


def _aligned_rows(texts: list[str] | None, candidate: dict, champion: dict) -> list[tuple] | None:
    columns = [texts, candidate.get("truth"), champion.get("predictions"), candidate.get("predictions")]
    if any(column is None for column in columns):
        return None
    lengths = [len(column) for column in columns]
    if len(set(lengths)) > 1 or champion.get("truth", columns[1]) != columns[1]:
        raise DataError(f"the evidence rows disagree (texts {lengths[0]}, truth {lengths[1]}, champion predictions "
                        f"{lengths[2]}, candidate predictions {lengths[3]}, champion truth "
                        f"{'same' if champion.get('truth', columns[1]) == columns[1] else 'different'}); "
                        "score both models on the same held-out rows")
    return list(zip(*columns))


def _slices(slices: list[dict]) -> Section:
    rows = [[s["slice"], str(s["rows"]), s.get("metric", ""), _points(s.get("delta_points")),
             _points(s.get("ci_high_points")), "yes" if s.get("gated") else "no", "yes" if s.get("passed") else "no"]
            for s in slices]
    headers = ["slice", "rows", "worst metric", "delta (points)", "95% upper bound", "gated", "passed"]
    return Section("slices", "Slices", [("table", Table(headers, rows))])


def _ood(ood: dict) -> Section:
    champion = ood.get("champion") or {}
    rows = [[name, _score(value), _score(champion.get(name))] for name, value in ood["candidate"].items()]
    verdict_line = "passed" if (ood.get("decision") or {}).get("passed") else "not passed"
    blocks: list[Block] = [("p", f"{ood['rows']} rows of {ood.get('path') or 'the out-of-domain file'}, gated like the "
                                 f"held-out rows: {verdict_line}."),
                           ("table", Table(["metric", "candidate", "champion"], rows))]
    blocks += [("p", reason) for reason in (ood.get("decision") or {}).get("reasons", [])]
    return Section("ood", "Out-of-domain rows", blocks)


def _training(findings: list[dict] | None) -> Section:
    if not findings:
        return Section("training", "Training diagnostics", [("p", "No training finding was recorded.")])
    rows = [[f["kind"], NONE if f.get("step") is None else str(f["step"]), f["message"]] for f in findings]
    return Section("training", "Training diagnostics", [("table", Table(["finding", "step", "what was seen, and what to do"], rows))])


def _leak_lines(leaks: dict | None) -> list[Block]:
    if not leaks or not leaks.get("count"):
        return []
    verb = "dropped from the training rows" if leaks.get("action") == "dropped" else "kept (data.on_leak: warn)"
    pairs = ", ".join(f"train row {p['train_row']} ~ held-out row {p['held_out_row']} ({p['jaccard']:.2f})"
                      for p in leaks.get("pairs", []))
    return [("p", f"Near-duplicate leakage: {leaks['count']} training/held-out pair(s) at Jaccard >= "
                  f"{leaks.get('threshold')}, {verb}; e.g. {pairs}.")]


def _data(diff: dict | None, leaks: dict | None = None) -> Section:
    if diff is None:
        return Section("data", "Data diff", [("p", "No data diff was recorded."), *_leak_lines(leaks)])
    revs = f"Revision {diff.get('old_rev') or NONE} → {diff.get('new_rev') or NONE}"
    rows = f"rows {_count(diff.get('old_rows'))} → {_count(diff.get('new_rows'))}"
    blocks: list[Block] = [("p", f"{revs}; {rows}.")]
    if diff.get("old_rows") is None:
        blocks.append(("p", "No previous data revision: every text is new."))
    counts = [[kind, str(diff[kind]["count"])] for kind in ("added", "removed", "relabelled")]
    blocks.append(("table", Table(["change (distinct texts)", "count"], counts)))
    for kind, headers in (("added", ["text", "label"]), ("removed", ["text", "label"]),
                          ("relabelled", ["text", "old label", "new label"])):
        found = diff[kind]["samples"]
        keys = ["label"] if len(headers) == 2 else ["old_label", "new_label"]
        if found:
            samples = [[_clip(s["text"])] + [str(s[k]) for k in keys] for s in found]
            title = f"{kind}: showing {len(found)} of {diff[kind]['count']}"
            blocks.append(("table", Table(headers, samples, title=title)))
    return Section("data", "Data diff", blocks + _leak_lines(leaks))


def _config(diff: list[dict]) -> Section:
    if not diff:
        return Section("config", "Config diff", [("p", "No configuration changes.")])
    rows = [[d["key"], _json(d["old"]), _json(d["new"])] for d in diff]
    return Section("config", "Config diff", [("table", Table(["key", "old", "new"], rows))])


def _score(value: float | None) -> str:
    return NONE if value is None else f"{value:.4f}"


def _points(value: float | None) -> str:
    return NONE if value is None else f"{round(value, 2) + 0.0:+.2f}"  # + 0.0 turns -0.0 into 0.0: no "-0.00"


def _count(value: int | None) -> str:
    return NONE if value is None else str(value)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT].rstrip() + "…"


def render_html(title: str, parts: list[Section]) -> str:
    """Render the sections as one HTML page with inline CSS and no external references."""
    body = "\n".join(f'<section id="{part.key}"><h2>{_h(part.title)}</h2>\n'
                     + "\n".join(_html_block(block) for block in part.blocks) + "</section>" for part in parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_h(title)}</title>'
            f"<style>{_CSS}</style></head>\n<body><h1>{_h(title)}</h1>\n{body}\n</body></html>\n")


def _html_block(block: Block) -> str:
    kind, payload = block
    if kind == "verdict":
        css = {"PROMOTED": "promoted", "REJECTED": "rejected"}.get(payload, "manual")
        return f'<p class="verdict {css}">{_h(payload)}</p>'
    if kind == "ul":
        return "<ul>" + "".join(f"<li>{_h(item)}</li>" for item in payload) + "</ul>"
    if kind == "table":
        return _html_table(payload)
    if kind == "pair":
        return '<div class="pair">' + "".join(f"<div>{_html_table(t)}</div>" for t in payload) + "</div>"
    return f"<p>{_h(payload)}</p>"


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{_h(h)}</th>" for h in table.headers)
    rows = []
    for i, row in enumerate(table.rows):
        cells = [f"<th>{_h(c)}</th>" if table.diagonal and j == 0 else
                 f"<td{_DIAG if table.diagonal and j == i + 1 else ''}>{_h(c)}</td>" for j, c in enumerate(row)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    caption = f"<caption>{_h(table.title)}</caption>" if table.title else ""
    css = ' class="matrix"' if table.diagonal else ""
    return f"<table{css}>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _h(text: str) -> str:
    return html.escape(str(text), quote=True)


def render_markdown(title: str, parts: list[Section]) -> str:
    """Render the sections as markdown, escaping user text so no raw HTML survives."""
    lines = [f"# {_md(title)}", ""]
    for part in parts:
        lines += [f"## {_md(part.title)}", ""]
        for kind, payload in part.blocks:
            if kind == "verdict":
                lines += [f"**{_md(payload)}**", ""]
            elif kind == "ul":
                lines += [f"- {_md(item)}" for item in payload] + [""]
            elif kind in ("table", "pair"):
                for table in payload if kind == "pair" else [payload]:
                    lines += _md_table(table)
            else:
                lines += [_md(payload), ""]
    return "\n".join(lines)


def _md_table(table: Table) -> list[str]:
    lines = [f"**{_md(table.title)}**", ""] if table.title else []
    lines.append("| " + " | ".join(_md(h) for h in table.headers) + " |")
    lines.append("|" + "---|" * len(table.headers))
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in table.rows]
    return lines + [""]


def _md(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))
