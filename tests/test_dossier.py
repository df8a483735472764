"""Unit tests for tuneloop.dossier: diffs on hand-built frames and dicts, and both rendered files."""

from __future__ import annotations

import copy
import re

import pandas as pd
import pytest

from tuneloop import dossier
from tuneloop.errors import DataError

LONG = "long " + "x" * 400
SCRIPT = "<script>alert(1)</script> fix three"
# text, truth, champion, candidate: rows 0-2 fixed, 3-5 broken, 6 both right, 7 both wrong
ROWS = [
    ("fix one", "a", "b", "a"),
    (LONG, "b", "a", "b"),
    (SCRIPT, "a", "b", "a"),
    ("break one", "b", "b", "a"),
    ("break two", "a", "a", "b"),
    ("break three", "b", "b", "c"),
    ("steady right", "a", "a", "a"),
    ("steady wrong", "a", "d", "c"),
]
REASONS = ["macro_f1 0.6123 vs champion 0.5988 (+1.36 points)", "slice billing: -0.00 points, within margin"]


def report(labels: list[str], confusion: list[list[int]], per_class: dict, predictions: list[str]) -> dict:
    """An evaluation report dict for ROWS (headline numbers are filler the dossier only prints)."""
    return {
        "rows": len(ROWS), "labels": labels, "accuracy": 0.5, "macro_f1": 0.5, "per_class_f1": per_class,
        "confusion": confusion, "accuracy_ci": [0.4, 0.6], "macro_f1_ci": [0.4, 0.6],
        "truth": [r[1] for r in ROWS], "predictions": predictions, "latency_ms": 1.0,
    }


def evidence() -> dict:
    """Evidence for a passing candidate against a champion whose labels are ["b", "a", "d"]."""
    return {
        "model": "tickets", "candidate_version": "7", "champion_version": "6", "run": "ct-2024-01-02",
        "created": "2024-01-02T03:04:05+00:00", "extra_key": "tolerated",
        "decision": {
            "passed": True, "manual": False, "policy": "auto", "reasons": REASONS, "metric": "macro_f1",
            "stats": {
                "macro_f1": {"candidate": 0.61234, "champion": 0.59876, "delta_points": 1.358,
                             "ci_low_points": -0.84, "ci_high_points": 3.5, "margin": 1.0},
                "accuracy": {"candidate": 0.625, "champion": 0.5, "delta_points": 12.5,
                             "ci_low_points": -1.5, "ci_high_points": 20.0, "margin": 1.0},
            },
            "mcnemar": {"b": 3, "c": 3, "p_value": 0.0312},
            "slices": [{"slice": "billing", "rows": 40, "metric": "accuracy", "delta_points": -0.004,
                        "ci_high_points": 7.5, "gated": True, "passed": True}],
        },
        "candidate": report(["a", "b", "c"], [[3, 1, 1], [1, 1, 1], [0, 0, 0]], {"a": 0.66667, "b": 0.4},
                            [r[3] for r in ROWS]),
        "champion": report(["b", "a", "d"], [[2, 1, 0], [2, 2, 1], [0, 0, 0]], {"a": 0.5, "b": 0.5}, [r[2] for r in ROWS]),
        "texts": [r[0] for r in ROWS],
        "data_diff": {"old_rev": "abc123", "new_rev": "def456", "old_rows": 4, "new_rows": 5,
                      "added": {"count": 3, "samples": [{"text": "t5", "label": "b"}]},
                      "removed": {"count": 2, "samples": [{"text": "t3", "label": "a"}]},
                      "relabelled": {"count": 1, "samples": [{"text": "t2", "old_label": "b", "new_label": "a"}]}},
        "config_diff": [{"key": "train.learning_rate", "old": 0.01, "new": 0.02}],
    }


def no_champion() -> dict:
    """Evidence for a first run: nothing serves, so the decision has no comparison."""
    raw = evidence()
    raw.update(champion=None, champion_version=None, data_diff=None, config_diff=[])
    raw["decision"].update(reasons=["no champion yet: passes on the floors alone"], mcnemar=None, slices=[])
    raw["decision"]["stats"] = {"macro_f1": {"candidate": 0.61234, "champion": None, "delta_points": None,
                                             "ci_low_points": None, "ci_high_points": None, "margin": 1.0}}
    return raw


def section(page: str, key: str) -> str:
    """The HTML of one dossier section."""
    found = re.search(f'<section id="{key}">(.*?)</section>', page, re.S)
    assert found, f"no section {key}"
    return found.group(1)


def table(parts: list[dossier.Section], key: str, title: str = "") -> dossier.Table:
    """The (first, or titled) table of one section."""
    blocks = next(p for p in parts if p.key == key).blocks
    tables = [t for kind, payload in blocks if kind in ("table", "pair")
              for t in (payload if kind == "pair" else [payload])]
    return next(t for t in tables if t.title == title) if title else tables[0]


# data_diff and config_diff

OLD = pd.DataFrame({"row": [1, 2, 3, 4], "text": ["t1", "t2", "t3", "t4"], "label": ["a", "b", "a", "b"]})
NEW = pd.DataFrame({"text": ["t1", "t2", "t5", "t6", "t7"], "label": ["a", "a", "b", "a", "b"]})


def test_data_diff_counts_and_samples_in_first_appearance_order():
    assert dossier.data_diff(OLD, NEW, samples=2) == {
        "old_rows": 4, "new_rows": 5,
        "added": {"count": 3, "samples": [{"text": "t5", "label": "b"}, {"text": "t6", "label": "a"}]},
        "removed": {"count": 2, "samples": [{"text": "t3", "label": "a"}, {"text": "t4", "label": "b"}]},
        "relabelled": {"count": 1, "samples": [{"text": "t2", "old_label": "b", "new_label": "a"}]},
    }


def test_data_diff_without_an_old_revision_counts_every_text_as_added():
    diff = dossier.data_diff(None, NEW)
    assert (diff["old_rows"], diff["added"]["count"], diff["removed"], diff["relabelled"]) == (
        None, 5, {"count": 0, "samples": []}, {"count": 0, "samples": []})
    assert [s["text"] for s in diff["added"]["samples"]] == ["t1", "t2", "t5", "t6", "t7"]


def test_data_diff_joins_the_labels_of_a_duplicated_text():
    new = pd.DataFrame({"text": ["t1", "t1", "t2"], "label": ["b", "a", "b"]})
    diff = dossier.data_diff(OLD, new)
    assert diff["relabelled"] == {"count": 1, "samples": [{"text": "t1", "old_label": "a", "new_label": "a, b"}]}


def test_data_diff_names_a_missing_column():
    with pytest.raises(DataError, match=r"lacks \['label'\]"):
        dossier.data_diff(OLD, pd.DataFrame({"text": ["t1"]}))


def test_config_diff_flattens_nested_dicts_and_sorts_by_key():
    old = {"train": {"learning_rate": 0.01, "epochs": 1}, "model": {"base": "x", "lora": {"r": 8}}, "seed": 0}
    new = {"train": {"learning_rate": 0.02, "epochs": 1, "warmup": 5}, "model": {"base": "x", "lora": {"r": 16}}}
    assert dossier.config_diff(old, new) == [
        {"key": "model.lora.r", "old": 8, "new": 16},
        {"key": "seed", "old": 0, "new": None},
        {"key": "train.learning_rate", "old": 0.01, "new": 0.02},
        {"key": "train.warmup", "old": None, "new": 5},
    ]


def test_config_diff_without_an_old_config_lists_every_key():
    assert dossier.config_diff(None, {"a": {"b": [1, 2]}, "c": {}}) == [
        {"key": "a.b", "old": None, "new": [1, 2]}, {"key": "c", "old": None, "new": {}}]


# write()

@pytest.mark.parametrize("passed,manual,expected", [
    (True, False, "PROMOTED"), (False, False, "REJECTED"), (False, True, "NEEDS MANUAL PROMOTION"),
    (True, True, "NEEDS MANUAL PROMOTION"),
])
def test_verdict_follows_passed_and_manual(passed, manual, expected):
    assert dossier.verdict({"passed": passed, "manual": manual}) == expected


def test_write_returns_both_files_with_verdict_and_every_reason(tmp_path):
    html_path, md_path = dossier.write(tmp_path / "out", evidence())
    assert (html_path, md_path) == (tmp_path / "out" / "dossier.html", tmp_path / "out" / "dossier.md")
    page, md = html_path.read_text(), md_path.read_text()
    head = section(page, "verdict")
    assert '<p class="verdict promoted">PROMOTED</p>' in head
    assert all(f"<li>{reason}</li>" in head for reason in REASONS)
    assert "**PROMOTED**" in md and all(f"- {reason}" in md for reason in REASONS)


def test_a_manual_policy_shows_needs_manual_promotion(tmp_path):
    raw = evidence()
    raw["decision"].update(passed=False, manual=True)  # the gate's require_manual policy: not passed, manual
    page = dossier.write(tmp_path, raw)[0].read_text()
    assert '<p class="verdict manual">NEEDS MANUAL PROMOTION</p>' in page


def test_metric_table_has_the_same_numbers_in_html_and_markdown(tmp_path):
    page, md = (p.read_text() for p in dossier.write(tmp_path, evidence()))
    rows = [["macro_f1", "0.6123", "0.5988", "+1.36", "-0.84 to +3.50", "1.00", "yes"],
            ["accuracy", "0.6250", "0.5000", "+12.50", "-1.50 to +20.00", "1.00", "no"]]
    metrics = section(page, "metrics")
    for row in rows:
        assert "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" in metrics
        assert "| " + " | ".join(row) + " |" in md
    assert "<tr><td>3</td><td>3</td><td>0.0312</td></tr>" in section(page, "mcnemar")
    assert "| 3 | 3 | 0.0312 |" in md


def test_flipped_examples_in_each_direction(tmp_path):
    page = dossier.write(tmp_path, evidence())[0].read_text()
    fixed, broken = section(page, "fixed"), section(page, "broken")
    assert "Fixed: champion wrong → candidate right (3 rows)" in fixed
    assert "Broken: champion right → candidate wrong (3 rows)" in broken
    assert fixed.count("<tr><td>") == 3 and broken.count("<tr><td>") == 3
    assert "<tr><td>fix one</td><td>a</td><td>b</td><td>a</td></tr>" in fixed
    assert f"<td>{LONG[:300]}…</td>" in fixed and LONG[:301] not in fixed
    assert "<tr><td>break three</td><td>b</td><td>b</td><td>c</td></tr>" in broken
    for text in ("steady right", "steady wrong", "break one"):
        assert text not in fixed
    assert "fix one" not in broken and "steady" not in broken


def test_flips_beyond_the_cap_are_counted_but_not_listed(tmp_path):
    raw = evidence()
    raw["texts"] = [f"row {i}" for i in range(25)]
    raw["candidate"].update(truth=["a"] * 25, predictions=["a"] * 25)
    raw["champion"].update(truth=["a"] * 25, predictions=["b"] * 25)
    fixed = section(dossier.write(tmp_path, raw)[0].read_text(), "fixed")
    assert "(25 rows, showing the first 20)" in fixed
    assert fixed.count("<tr><td>") == 20 and "row 19<" in fixed and "row 20<" not in fixed


def test_user_text_is_escaped_in_html_and_markdown(tmp_path):
    page, md = (p.read_text() for p in dossier.write(tmp_path, evidence()))
    assert "&lt;script&gt;alert(1)&lt;/script&gt; fix three" in page
    assert "<script" not in page
    assert "\\<script\\>alert(1)\\</script\\> fix three" in md


def test_confusion_matrices_align_by_label_name():
    parts = dossier.sections(evidence())
    candidate, champion = table(parts, "confusion", "candidate"), table(parts, "confusion", "champion")
    assert candidate.headers == champion.headers == ["truth \\ predicted", "a", "b", "c", "d"]
    assert candidate.rows == [["a", "3", "1", "1", "0"], ["b", "1", "1", "1", "0"], ["c", "0", "0", "0", "0"],
                              ["d", "0", "0", "0", "0"]]
    assert champion.rows == [["a", "2", "2", "0", "1"], ["b", "1", "2", "0", "0"], ["c", "0", "0", "0", "0"],
                             ["d", "0", "0", "0", "0"]]
    assert table(parts, "per-class").rows == [["a", "0.6667", "0.5000", "+16.67"], ["b", "0.4000", "0.5000", "-10.00"]]


def test_slices_data_and_config_sections(tmp_path):
    page = dossier.write(tmp_path, evidence())[0].read_text()
    assert ("<tr><td>billing</td><td>40</td><td>accuracy</td><td>+0.00</td><td>+7.50</td><td>yes</td><td>yes</td></tr>"
            in section(page, "slices"))
    data = section(page, "data")
    assert "Revision abc123 → def456; rows 4 → 5." in data
    assert "<tr><td>added</td><td>3</td></tr><tr><td>removed</td><td>2</td></tr>" in data
    assert "<tr><td>t2</td><td>b</td><td>a</td></tr>" in data
    assert "<tr><td>train.learning_rate</td><td>0.01</td><td>0.02</td></tr>" in section(page, "config")


def test_data_diff_without_revisions_still_renders():
    raw = evidence()
    del raw["data_diff"]["old_rev"], raw["data_diff"]["new_rev"]
    data = next(p for p in dossier.sections(raw) if p.key == "data")
    assert data.blocks[0] == ("p", "Revision — → —; rows 4 → 5.")


def test_no_champion_renders_without_comparison_sections(tmp_path):
    page, md = (p.read_text() for p in dossier.write(tmp_path, no_champion()))
    assert re.findall(r'<section id="([^"]+)">', page) == ["verdict", "metrics", "confusion", "per-class", "training",
                                                            "data", "config"]
    assert "No champion: this is the first candidate" in page
    assert "No training finding was recorded." in section(page, "training")
    assert "<tr><td>macro_f1</td><td>0.6123</td></tr>" in section(page, "metrics")
    assert "| macro_f1 | 0.6123 |" in md
    for absent in ("McNemar", "Fixed:", "Broken:", "champion F1", "<caption>champion</caption>"):
        assert absent not in page and absent not in md
    assert "No data diff was recorded." in page and "No configuration changes." in page


def test_html_is_self_contained(tmp_path):
    raw = evidence()
    raw["texts"][0] = "see http://example.com/x.js"
    page = dossier.write(tmp_path, raw)[0].read_text()
    assert "<style>" in page
    assert not re.search(r"(?:src|href)\s*=|<link|<script|@import|url\(", page, re.I)


def test_reports_scored_on_different_rows_are_refused(tmp_path):
    raw = copy.deepcopy(evidence())
    raw["champion"]["predictions"] = raw["champion"]["predictions"][:-1]
    with pytest.raises(DataError, match="champion predictions 7"):
        dossier.write(tmp_path, raw)


def test_reports_without_row_predictions_say_so():
    raw = evidence()
    del raw["candidate"]["predictions"]
    fixed = next(p for p in dossier.sections(raw) if p.key == "fixed")
    assert fixed.blocks == [("p", "Row-level predictions were not recorded, so flipped examples cannot be shown.")]


def _gated(both: int, only_candidate: int, only_champion: int, neither: int) -> dict:
    """Evidence as the cycle builds it, from a real gate decision over constructed predictions."""
    from tests.test_gate import reports
    from tuneloop.config import GateConfig
    from tuneloop.gate import decide

    candidate, champion = reports(both, only_candidate, only_champion, neither)
    return {"model": "m", "candidate_version": None, "champion_version": "1", "run": "r", "created": "2026-12-01T00:00:00",
            "decision": decide(candidate, champion, GateConfig()).to_dict(), "candidate": candidate.to_dict(),
            "champion": champion.to_dict(), "texts": [f"row {i}" for i in range(candidate.rows)],
            "data_diff": None, "config_diff": []}


def test_a_lead_by_chance_is_rejected_and_the_dossier_says_why(tmp_path):
    html, markdown = dossier.write(tmp_path, _gated(140, 22, 18, 20))  # 0.81 vs 0.79 on 200 rows
    page, twin = html.read_text(), markdown.read_text()
    why = ("accuracy 0.8100 vs champion 0.7900: +2.00 points, 95% CI [-4.00, +8.00]; lower bound -4.00 regresses "
           "more than gate.margin=1.0 points: not shown to be non-inferior")
    assert "REJECTED" in section(page, "verdict")
    assert why in page
    assert why.replace("[", "\\[").replace("]", "\\]") in twin  # markdown escapes the brackets
    assert "PROMOTED" not in page


def test_a_clearly_better_candidate_is_promoted_in_the_dossier(tmp_path):
    html, _ = dossier.write(tmp_path, _gated(270, 110, 10, 10))  # 0.95 vs 0.70 on 400 rows
    assert "PROMOTED" in section(html.read_text(), "verdict")


def test_a_generative_dossier_shows_outputs_where_the_candidate_lost_most(tmp_path):
    from tuneloop import evaluation
    from tuneloop.config import GateConfig
    from tuneloop.gate import decide

    def scored(outputs: list[str], rouge: list[float]):
        return evaluation.score_texts("seq2seq", ["ref a", "ref b", "ref c"], outputs,
                                      {"rouge1": rouge, "rouge2": rouge, "rougeL": rouge})

    candidate, champion = scored(["x", "y", "z"], [0.5, 0.1, 0.9]), scored(["p", "q", "r"], [0.5, 0.6, 0.2])
    evidence = {"model": "m", "candidate_version": None, "champion_version": "1", "run": "r", "created": "now",
                "decision": decide(candidate, champion, GateConfig(min_rows=1)).to_dict(), "candidate": candidate.to_dict(),
                "champion": champion.to_dict(), "texts": ["in a", "in b", "in c"], "data_diff": None, "config_diff": []}
    parts = dossier.sections(evidence)
    assert [p.key for p in parts] == ["verdict", "metrics", "outputs", "training", "data", "config"]
    outputs = table(parts, "outputs")
    assert outputs.rows == [["in b", "ref b", "q", "y", "0.6000", "0.1000"], ["in a", "ref a", "p", "x", "0.5000", "0.5000"],
                            ["in c", "ref c", "r", "z", "0.2000", "0.9000"]]  # the largest loss first
    html, _ = dossier.write(tmp_path, evidence)
    assert "Largest ROUGE-L losses against the champion" in html.read_text()


def test_training_findings_are_listed_with_their_step_and_remedy(tmp_path):
    evidence = {**no_champion(), "findings": [
        {"kind": "overfitting", "message": "overfitting at step 40: ...; stopped on the best checkpoint", "step": 40, "details": {}},
        {"kind": "rank_collapse", "message": "rank collapse: 3 of 4 adapted modules ...", "step": None, "details": {}}]}
    page, md = (p.read_text() for p in dossier.write(tmp_path, evidence))
    assert ("<tr><td>overfitting</td><td>40</td><td>overfitting at step 40: ...; stopped on the best checkpoint</td></tr>"
            in section(page, "training"))
    assert "| rank_collapse | — | rank collapse: 3 of 4 adapted modules ... |" in md
