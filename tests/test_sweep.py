"""Sweeps: the matrix a sweep file expands to, the errors a bad one fails with before any cell
starts, the cache key, a cell's failure as a result, and the report (Pareto front by hand, plots).

The run through the local pipeline (cells, a killed cell, the cache on a re-run) is in
test_sweep_pipeline.py.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.bad_input import cli
from tuneloop import sweep_report
from tuneloop.config import GateConfig
from tuneloop.errors import ConfigError
from tuneloop.evaluation import EvalReport, score
from tuneloop.sweep import Cell, CellResult, cache_key, parse_sweep, run_cell


def base(model: Path, **sweep) -> dict:
    return {"data": {"path": "data/tickets.csv"}, "model": {"base": str(model), "max_length": 32},
            "train": {"epochs": 1, "batch_size": 16}, "sweep": sweep}


def test_axes_expand_to_every_combination_with_the_reference_first(tiny_model):
    found = parse_sweep(base(tiny_model, axes={"method": ["lora", "ia3"], "method.r": [4, 8]},
                             cells=[{"name": "prompt", "method": "prompt_tuning", "method.num_virtual_tokens": 5}]))
    # IA3 has no rank: its two combinations are one training, run once.
    assert [c.name for c in found.cells] == ["full (reference)", "method=lora, r=4", "method=lora, r=8", "method=ia3", "prompt"]
    assert [c.reference for c in found.cells] == [True, False, False, False, False]
    reference, lora4, lora8, ia3, prompt = (c.config for c in found.cells)
    assert (reference.method.name, reference.quantization.bits, reference.train.learning_rate) == ("full", 0, None)
    assert (lora4.method.name, lora4.method.r, lora8.method.r, ia3.method.name) == ("lora", 4, 8, "ia3")
    assert (prompt.method.name, prompt.method.num_virtual_tokens) == ("prompt_tuning", 5)
    assert found.cells[3].settings == {"method.name": "ia3"}
    assert {c.config.train.epochs for c in found.cells} == {1}  # the base config's keys reach every cell


def test_a_full_fine_tuning_cell_is_the_reference_and_none_is_added(tiny_model):
    found = parse_sweep(base(tiny_model, axes={"method": ["full", "lora"]}))
    assert [(c.name, c.reference) for c in found.cells] == [("method=full", True), ("method=lora", False)]
    none = parse_sweep(base(tiny_model, axes={"method": ["lora"]}, reference=False))
    assert [c.name for c in none.cells] == ["method=lora"]


def test_shorthands_and_nested_keys(tiny_model):
    found = parse_sweep(base(tiny_model, reference=False, axes={"quantization": [0, 8], "train.learning_rate": [0.001]}))
    assert [(c.name, c.config.quantization.bits, c.config.train.learning_rate) for c in found.cells] == [
        ("bits=0, learning_rate=0.001", 0, 0.001), ("bits=8, learning_rate=0.001", 8, 0.001)]


@pytest.mark.parametrize("sweep, message", [
    ({"axes": {"train.learnin_rate": [0.1]}},
     "sweep axis train.learnin_rate is not a key a sweep can vary: train has no key 'learnin_rate'; use a dotted "
     "config key such as method.r or train.learning_rate"),
    ({"axes": {"method": ["lora", "lorax"]}},
     "sweep axis method value 'lorax' is not a method; use one of: lora, dora, rslora, loftq, loha, lokr, adalora, ia3, "
     "prompt_tuning, prefix_tuning, p_tuning, full"),
    ({"axes": {"method": ["prompt_tuning"], "method.r": [8]}},
     "sweep axis method.r is not a key a sweep can vary: no method of this sweep (prompt_tuning) has a key 'r'; "
     "use a dotted config key such as method.r or train.learning_rate"),
    ({"axes": {"method.r": [4, 0]}},
     "sweep axis method.r value 0 (cell r=0): method.r = 0: input should be greater than or equal to 1; fix the value "
     "(see `tuneloop config schema`)"),
    ({"axes": {"train.batch_size": ["big"]}},
     "sweep axis train.batch_size value \"big\" (cell batch_size=big): train.batch_size = \"big\": input should be a "
     "valid integer; fix the value (see `tuneloop config schema`)"),
    ({"axes": {"method": ["full", "lora"], "quantization": [4]}},
     "sweep axis method.name value \"full\" (cell method=full, bits=4): method.name full cannot train on "
     "quantization.bits 4: full fine-tuning updates every base weight, and quantized weights take no gradients; set "
     "quantization.bits 0, or use a method that can (adalora, dora, ia3, loftq, lora, p_tuning, prefix_tuning, "
     "prompt_tuning, rslora)"),
    ({"axes": {"method": []}}, "sweep axis method has no values; list at least one or remove the axis"),
    ({"axes": {"data.max_train_rows": [100, 200]}},
     "sweep axis data.max_train_rows is not a key a sweep can vary: data is the same for every cell (one snapshot, one "
     "gate, one runtime); vary keys of model, method, quantization, generation, train; use a dotted config key such as "
     "method.r or train.learning_rate"),
    ({"axes": {"model.task": ["seq2seq"]}},
     "sweep axis model.task is not a key a sweep can vary: it is the same for every cell (every cell reads the same "
     "data, whose columns the task names); use a dotted config key such as method.r or train.learning_rate"),
    ({"axes": {"method": ["lora"]}, "cells": [{"name": "p", "method": "prompt_tuning", "method.r": 8}]},
     "sweep cell p sets method.r, which method prompt_tuning does not have; remove it or change the cell's method"),
    ({"cells": [{"name": 8, "method": "ia3"}]},
     "sweep cell 1: name 8 must be a non-empty text; quote it, e.g. name: \"r8\""),
    ({"cells": [{"quantization": 4, "quantization.bits": 8}]},
     "sweep cell 1 sets a key twice (once by its short name): quantization, quantization.bits; keep one"),
    ({}, "the sweep has no cells: sweep.axes and sweep.cells are both empty; list an axis (e.g. `method: [lora, ia3]`) "
         "or a cell"),
    ({"axes": {"method": ["lora"]}, "parallelism": 0},
     "sweep.parallelism = 0: input should be greater than or equal to 1; fix the value (see `tuneloop config schema`)"),
    ({"cells": [{"name": "a", "method": "lora"}, {"name": "a", "method": "ia3"}]},
     "sweep cell name 'a' is used twice; give each explicit cell its own name"),
])
def test_a_bad_sweep_is_refused_naming_the_axis_and_value(tiny_model, sweep, message):
    with pytest.raises(ConfigError) as raised:
        parse_sweep(base(tiny_model, **sweep))
    assert str(raised.value) == message


def test_a_bad_sweep_file_fails_before_any_cell_starts(workspace):
    sweep_file = workspace.parent / "sweep.yaml"
    sweep_file.write_text(workspace.read_text() + "sweep:\n  axes:\n    method.r: [8, -1]\n")
    done = cli("sweep", str(sweep_file))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "error: ConfigError: sweep axis method.r value -1 (cell r=-1): method.r = -1: input should be greater than or "
        "equal to 1; fix the value (see `tuneloop config schema`)")
    assert not (workspace.parent / "runs").exists()


def test_a_cell_over_the_memory_limit_is_refused_before_any_cell_starts(workspace, tickets_csv):
    assert cli("data", "add", str(tickets_csv), "--name", "tickets", "--config", str(workspace)).returncode == 0
    sweep_file = workspace.parent / "sweep.yaml"
    sweep_file.write_text(workspace.read_text() + "sweep:\n  axes:\n    method: [lora]\n  memory_limit_mb: 50\n")
    done = cli("sweep", str(sweep_file), "--config", str(workspace))
    assert done.returncode == 1
    line = done.stderr.splitlines()[-1]
    # Both cells, in one line, before any warm-up built a model.
    assert re.fullmatch(
        r"error: ConfigError: full \(reference\) ~[\d,]+ MB; method=lora ~[\d,]+ MB: over the 50 MB limit "
        r"\(sweep\.memory_limit_mb\); lower train\.batch_size or model\.max_length, quantize the base, leave those "
        r"cells out \(the full fine-tuning reference: sweep\.reference: false\), or raise sweep\.memory_limit_mb", line), line
    assert "estimating" not in done.stderr
    assert not (workspace.parent / "runs").exists()


# ------------------------------------------------------------------------------------------------
# The cache key: the rows by content, and what shapes the training


def _snapshot(folder: Path, train: str, held_out: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text(train)
    (folder / "held_out.jsonl").write_text(held_out)
    return folder


def test_the_cache_key_follows_the_data_content_and_the_cell_not_the_path(tiny_model, tmp_path):
    cells = parse_sweep(base(tiny_model, axes={"method.r": [4, 8]}, reference=False)).cells
    rows = '{"text": "a", "label": "x"}\n'
    one = _snapshot(tmp_path / "one", rows, rows)
    same = _snapshot(tmp_path / "elsewhere", rows, rows)
    changed = _snapshot(tmp_path / "changed", rows + '{"text": "b", "label": "y"}\n', rows)
    assert cache_key(cells[0], one) == cache_key(cells[0], same)
    assert cache_key(cells[0], one) != cache_key(cells[0], changed)
    assert cache_key(cells[0], one) != cache_key(cells[1], one)
    # The name and the sweep's other cells do not count: only what the cell trains.
    renamed = Cell("another name", cells[0].settings, cells[0].config)
    assert cache_key(renamed, one) == cache_key(cells[0], one)


def test_a_killed_or_failing_cell_is_a_failed_result_and_is_not_cached(tiny_model, tmp_path):
    cell = parse_sweep(base(tiny_model, axes={"method": ["lora"]}, reference=False)).cells[0]
    rows = '{"text": "a", "label": "x"}\n'
    snapshot = _snapshot(tmp_path / "snap", rows, rows)
    killed = run_cell(cell, snapshot, tmp_path / "out", tmp_path / "cache",
                      [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert (killed.status, killed.error) == (
        "failed", "the cell's process was killed by signal SIGKILL (out of memory, or stopped from outside)")
    error = "import pathlib, sys; pathlib.Path(sys.argv[3], 'error.txt').write_text('TrainingError: boom'); sys.exit(1)"
    failed = run_cell(cell, snapshot, tmp_path / "out2", tmp_path / "cache", [sys.executable, "-c", error])
    assert (failed.status, failed.error) == ("failed", "TrainingError: boom")
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------------------------
# The report


def test_the_pareto_front_by_hand():
    # (quality, memory, params): b is dominated by a (better quality, less memory, fewer params);
    # c trades memory for quality; d ties a on quality and memory but trains more; e is best on quality.
    points = [(0.80, 100, 10), (0.70, 120, 20), (0.60, 50, 10), (0.80, 100, 30), (0.90, 300, 1000)]
    assert sweep_report.pareto_front(points) == [True, False, True, False, True]
    # Lower is better (perplexity): the same points read the other way.
    assert sweep_report.pareto_front([(10.0, 100), (12.0, 100), (9.0, 200)], higher_is_better=False) == [True, False, True]
    assert sweep_report.pareto_front([(0.5, 1, 1), (0.5, 1, 1)]) == [True, True]  # equals dominate nothing


LABELS = ["a", "b"]
TRUTH = ["a", "b"] * 100


def _result(name: str, right: int, memory: float, params: int, reference: bool = False) -> CellResult:
    """A cell whose predictions are right on the first `right` of 200 rows."""
    predictions = [t if i < right else ("b" if t == "a" else "a") for i, t in enumerate(TRUTH)]
    report = score(TRUTH, predictions, LABELS)
    train = {"trainable_params": params, "total_params": 1000, "peak_memory_mb": memory, "wall_seconds": 10.0,
             "samples_per_second": 50.0, "adapter_bytes": 4096, "cost": 0.0, "epochs_run": 1}
    return CellResult(name, {}, reference, "ok", "k", None, False, train, report.to_dict(),
                      {"peak_memory_mb": memory * 1.1, "seconds": 12.0})


def test_the_report_compares_every_cell_with_the_reference(tmp_path):
    results = [
        _result("full", 180, 500.0, 1000, reference=True),  # accuracy 0.90
        _result("lora", 178, 200.0, 20),  # 0.89: within a point, far cheaper
        _result("prompt", 120, 210.0, 5),  # 0.60: fewest parameters, but more memory than lora
        _result("ia3", 150, 250.0, 30),  # 0.75: dominated by lora on every figure
        CellResult("broken", {}, False, "failed", "k", "TrainingError: boom"),
    ]
    report = sweep_report.build(results, GateConfig(min_accuracy=0.0, min_macro_f1=0.0, min_rows=10), "sequence_classification", "t")
    rows = {row["name"]: row for row in report["rows"]}
    assert report["reference"] == "full" and report["metric"] == "macro_f1"
    assert {name: row.get("pareto") for name, row in rows.items()} == {
        "full": True, "lora": True, "prompt": True, "ia3": False, "broken": None}
    assert rows["lora"]["metrics"]["accuracy"] == 0.89
    assert rows["lora"]["delta_points"] == pytest.approx(-1.0)
    assert rows["prompt"]["gate_passed"] is False and rows["ia3"]["gate_passed"] is False
    assert rows["broken"]["status"] == "failed" and "delta_points" not in rows["broken"]
    assert "delta_points" not in rows["full"]
    assert rows["lora"]["estimate"] == {"peak_memory_mb": pytest.approx(220.0), "seconds": 12.0, "memory_error": pytest.approx(0.1),
                                        "time_error": pytest.approx(0.2)}
    files = sweep_report.write(report, tmp_path / "report")
    assert sorted(p.name for p in files.values()) == ["quality_vs_memory.png", "quality_vs_params.png", "report.html",
                                                      "report.md", "sweep.json"]
    for kind in ("memory", "params"):
        assert files[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = files["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "src=\"http" not in page
    markdown = files["markdown"].read_text().splitlines()
    assert markdown[4].startswith("| cell | macro_f1 [95% CI] | Δ vs ref (points) [95% CI] |")
    assert markdown[8].startswith("| prompt | 0.6000 ")
    assert markdown[10] == "| broken | FAILED: TrainingError: boom |" + "  |" * 10
    assert json.loads(files["json"].read_text()) == report


def test_a_sweep_file_given_to_another_command_says_how_to_run_it(tiny_model):
    from tuneloop.config import parse_config

    with pytest.raises(ConfigError) as raised:
        parse_config(base(tiny_model, axes={"method": ["lora"]}))
    assert str(raised.value) == "sweep: this is a sweep file; run it with `tuneloop sweep FILE` (other commands take a plain config)"


def test_a_new_method_keeps_the_base_method_keys_it_also_has(tiny_model):
    raw = base(tiny_model, axes={"method": ["lora", "dora", "ia3"]}, reference=False)
    raw["method"] = {"name": "lora", "r": 16, "target_modules": ["query"], "dropout": 0.0}
    lora, dora, ia3 = (c.config.method for c in parse_sweep(raw).cells)
    assert (lora.r, lora.target_modules, lora.dropout) == (16, ["query"], 0.0)
    assert (dora.name, dora.r, dora.target_modules, dora.dropout) == ("dora", 16, ["query"], 0.0)
    assert (ia3.name, ia3.target_modules) == ("ia3", ["query"])  # IA3 has no rank or dropout


def test_the_cache_key_changes_with_what_the_cell_trains(tiny_model, tmp_path):
    rows = '{"text": "a", "label": "x"}\n'
    snapshot = _snapshot(tmp_path / "snap", rows, rows)
    cells = parse_sweep(base(tiny_model, reference=False, axes={
        "quantization": [0, 8], "train.learning_rate": [0.001, 0.002], "generation.max_new_tokens": [8, 16]})).cells
    assert len(cells) == 8 and len({cache_key(c, snapshot) for c in cells}) == 8


def _generated(name: str, nll: list[float], reference: bool = False) -> CellResult:
    from tuneloop.evaluation import score_texts

    report = score_texts("causal_lm", ["r"] * len(nll), ["o"] * len(nll),
                         {"nll": nll, "tokens": [10.0] * len(nll), "rougeL": [0.5] * len(nll)})
    train = {"trainable_params": 10, "total_params": 100, "peak_memory_mb": 100.0, "wall_seconds": 1.0,
             "samples_per_second": 1.0, "adapter_bytes": 10, "cost": 0.0}
    return CellResult(name, {}, reference, "ok", "k", None, False, train, report.to_dict())


def test_a_lower_is_better_metric_reads_the_other_way():
    # Perplexity exp(nll / tokens): the reference at exp(2) = 7.39, "better" at exp(1.9) = 6.69, "worse" at exp(2.3).
    results = [_generated("full", [20.0] * 60, reference=True), _generated("better", [19.0] * 60),
               _generated("worse", [23.0] * 60)]
    report = sweep_report.build(results, GateConfig(min_rows=10), "causal_lm", "decoder")
    rows = {row["name"]: row for row in report["rows"]}
    assert (report["metric"], report["higher_is_better"]) == ("perplexity", False)
    assert rows["better"]["delta_points"] == pytest.approx(10.0)  # 100 x (log 7.39 - log 6.69): positive, better
    assert rows["worse"]["delta_points"] == pytest.approx(-30.0)
    # Every cell has the same memory and parameters: the lowest perplexity alone is on the front.
    assert [rows[n]["pareto"] for n in ("full", "better", "worse")] == [False, True, False]


def test_a_report_with_every_cell_failed_still_writes(tmp_path):
    results = [CellResult("a", {}, True, "failed", "k", "TrainingError: boom"),
               CellResult("b", {}, False, "failed", "k", "the cell's process was killed by signal SIGKILL")]
    report = sweep_report.build(results, GateConfig(), "sequence_classification", "all-failed")
    assert report["reference"] is None and [row["status"] for row in report["rows"]] == ["failed", "failed"]
    files = sweep_report.write(report, tmp_path / "r")
    assert files["memory"].read_bytes()[:4] == b"\x89PNG"
    assert sweep_report.text_table(report).splitlines()[1:] == [
        "a (reference)  FAILED: TrainingError: boom", "b              FAILED: the cell's process was killed by signal SIGKILL"]
