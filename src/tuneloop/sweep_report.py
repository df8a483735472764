"""The sweep report: per cell, quality with its interval and its difference from the reference,
what it cost (trainable parameters, peak memory, time, adapter size, latency, money), whether the
gate would pass it against the reference, and the Pareto front; as markdown, a self-contained
HTML page, JSON, and two plots (quality vs peak memory, quality vs trainable parameters).

Everything here is a pure function of the cell results, so `tuneloop sweep show` rebuilds the
same table from the stored JSON.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tuneloop import evaluation, gate, plots, tasks
from tuneloop.config import Config, GateConfig
from tuneloop.evaluation import EvalReport
from tuneloop.sweep import CellResult

REPORT_JSON, REPORT_MD, REPORT_HTML = "sweep.json", "report.md", "report.html"
PLOTS = {"memory": ("quality_vs_memory.png", "peak_memory_mb", "peak memory (MB)"),
         "params": ("quality_vs_params.png", "trainable_params", "trainable parameters (log scale)")}


def pareto_front(points: list[tuple[float, ...]], higher_is_better: bool = True) -> list[bool]:
    """Which points no other point dominates. A point is (quality, cost, cost, ...): quality is
    better higher (or lower, with `higher_is_better` False), every cost better lower. A point is
    dominated when another is at least as good on every figure and better on one."""
    sign = 1.0 if higher_is_better else -1.0
    keyed = [(sign * p[0], *(-c for c in p[1:])) for p in points]  # every figure now better higher

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [not any(dominates(other, mine) for j, other in enumerate(keyed) if j != i) for i, mine in enumerate(keyed)]


def _relative_error(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or not measured:
        return None
    return (predicted - measured) / measured


def build(results: list[CellResult], gate_cfg: GateConfig, task_name: str, name: str = "sweep") -> dict:
    """The report of a sweep's cell results (the reference cell's, if any, is the baseline).

    Returns:
        {"name", "task", "metric", "higher_is_better", "reference", "created", "rows": [...]}; each row
        holds the cell's status and error, metrics and intervals, delta vs the reference (points)
        with its paired 95% interval, efficiency figures, the gate verdict vs the reference, the
        Pareto flag (quality vs peak memory vs trainable parameters) and predicted vs measured.
    """
    task = tasks.get(task_name)
    metric = gate_cfg.metric or task.headline
    higher = task.metric(metric).higher_is_better
    reports = {r.name: EvalReport.from_dict(r.evaluation) for r in results if r.status == "ok"}
    reference = next((r.name for r in results if r.reference and r.status == "ok"), None)
    rows = []
    for result in results:
        row: dict[str, Any] = {"name": result.name, "settings": result.settings, "status": result.status,
                               "error": result.error, "cached": result.cached, "reference": result.reference}
        if result.status == "ok":
            report, trained = reports[result.name], result.train
            row.update(
                metrics=report.metrics, intervals={k: list(v) for k, v in report.intervals.items()},
                trainable_params=trained["trainable_params"], total_params=trained["total_params"],
                trainable_percent=100 * trained["trainable_params"] / trained["total_params"],
                peak_memory_mb=trained["peak_memory_mb"], wall_seconds=trained["wall_seconds"],
                samples_per_second=trained["samples_per_second"], adapter_bytes=trained["adapter_bytes"],
                latency_p50_ms=report.latency_p50_ms, latency_p95_ms=report.latency_p95_ms, cost=trained.get("cost", 0.0),
                epochs_run=trained.get("epochs_run"),
            )
            if reference is not None and result.name != reference:
                ref = reports[reference]
                compared = evaluation.compare(report, ref, gate_cfg.bootstrap_draws, gate_cfg.seed)  # the gate's own draws
                # cells are timed in other processes (or read from the cache): their latencies do not compare
                unjudged = gate_cfg.model_copy(update={"max_latency_ratio": 0.0})
                decision = gate.decide(report, ref, unjudged, trained.get("findings"))
                row.update(delta_points=float(task.metric(metric).delta_points(report.metrics[metric], ref.metrics[metric])),
                           delta_interval=list(compared.intervals[metric]), gate_passed=decision.passed,
                           gate_reasons=list(decision.reasons))
        estimate = result.estimate or {}
        row["estimate"] = {
            "peak_memory_mb": estimate.get("peak_memory_mb"), "seconds": estimate.get("seconds"),
            "memory_error": _relative_error(estimate.get("peak_memory_mb"), row.get("peak_memory_mb")),
            "time_error": _relative_error(estimate.get("seconds"), row.get("wall_seconds")),
        } if estimate else None
        rows.append(row)
    done = [row for row in rows if row["status"] == "ok"]
    front = pareto_front([(r["metrics"][metric], r["peak_memory_mb"], r["trainable_params"]) for r in done], higher)
    for row, on_front in zip(done, front):
        row["pareto"] = on_front
    return {"name": name, "task": task_name, "metric": metric, "higher_is_better": higher, "reference": reference,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}


def _size(count: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return f"{count:.0f}"


def _bytes(count: float) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.0f}%"


COLUMNS = ("cell", "{metric} [95% CI]", "Δ vs ref (points) [95% CI]", "trainable", "peak MB (est.)", "time s (est.)",
           "samples/s", "adapter", "latency p50/p95 ms", "cost", "gate vs ref", "Pareto")


def table_rows(report: dict) -> list[list[str]]:
    """The report's table as text cells (the header is COLUMNS with the metric's name)."""
    metric, lines = report["metric"], []
    for row in report["rows"]:
        name = row["name"] + (" (reference)" if row["reference"] and "reference" not in row["name"] else "") + \
            (" (cached)" if row["cached"] else "")
        if row["status"] != "ok":
            lines.append([name, f"FAILED: {row['error']}"] + [""] * (len(COLUMNS) - 2))
            continue
        low, high = row["intervals"][metric]
        quality = f"{row['metrics'][metric]:.4f} [{low:.4f}, {high:.4f}]"
        delta = ""
        if "delta_points" in row:
            delta = f"{row['delta_points']:+.2f} [{row['delta_interval'][0]:+.2f}, {row['delta_interval'][1]:+.2f}]"
        estimate = row["estimate"] or {}
        memory = f"{row['peak_memory_mb']:.0f}"
        seconds = f"{row['wall_seconds']:.0f}"
        if estimate.get("peak_memory_mb") is not None:
            memory += f" ({estimate['peak_memory_mb']:.0f}, {_percent(estimate['memory_error'])})"
        if estimate.get("seconds") is not None:
            seconds += f" ({estimate['seconds']:.0f}, {_percent(estimate['time_error'])})"
        verdict = ""
        if "gate_passed" in row:  # the reasons, long, are listed under the table
            verdict = "pass" if row["gate_passed"] else "fail"
        lines.append([
            name, quality, delta, f"{_size(row['trainable_params'])} ({row['trainable_percent']:.3g}%)", memory, seconds,
            f"{row['samples_per_second']:.1f}", _bytes(row["adapter_bytes"]),
            f"{row['latency_p50_ms']:.1f}/{row['latency_p95_ms']:.1f}", f"{row['cost']:.4f}", verdict,
            "yes" if row.get("pareto") else "",
        ])
    return lines


def _header(report: dict) -> list[str]:
    return [c.format(metric=report["metric"]) for c in COLUMNS]


def markdown(report: dict) -> str:
    """The table as markdown, with a line on what it compares."""
    header = _header(report)
    lines = [f"# Sweep {report['name']}", "",
             f"{report['task']}, metric {report['metric']} ({'higher' if report['higher_is_better'] else 'lower'} is "
             f"better); reference: {report['reference'] or 'none'}; Pareto: {report['metric']} vs peak memory vs "
             f"trainable parameters; (est.): the pre-flight estimate and its error vs the measurement.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in table_rows(report)]
    reasons = gate_reasons(report)
    if reasons:
        lines += ["", "Gate against the reference, cell by cell:", ""] + [f"- **{name}**: {why}" for name, why in reasons]
    return "\n".join(lines) + "\n"


def gate_reasons(report: dict) -> list[tuple[str, str]]:
    """Each compared cell's gate verdict against the reference, with its reasons."""
    return [(row["name"], ("pass: " if row["gate_passed"] else "fail: ") + "; ".join(row["gate_reasons"]))
            for row in report["rows"] if "gate_passed" in row]


def text_table(report: dict) -> str:
    """The table for a terminal: aligned columns, failed cells with their error."""
    header, body = _header(report), table_rows(report)
    widths = [max(len(r[i]) for r in [header, *body] if not r[1].startswith("FAILED") or i == 0) for i in range(len(header))]
    out = []
    for row in [header, *body]:
        if row[1].startswith("FAILED"):
            out.append(f"{row[0].ljust(widths[0])}  {row[1]}")
        else:
            out.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(out) + "\n"


def plot(report: dict, kind: str, path: Path) -> Path:
    """Quality against peak memory (`kind` memory) or trainable parameters (`params`, log x), every
    point labelled, the front of those two figures highlighted and joined."""
    plt = plots.pyplot()
    _, key, label = PLOTS[kind]
    metric, done = report["metric"], [r for r in report["rows"] if r["status"] == "ok"]
    xs, ys = [r[key] for r in done], [r["metrics"][metric] for r in done]
    front = pareto_front(list(zip(ys, xs)), report["higher_is_better"])
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
    axes.scatter([x for x, f in zip(xs, front) if not f], [y for y, f in zip(ys, front) if not f], color="#9aa5b1",
                 label="dominated", zorder=2)
    axes.scatter([x for x, f in zip(xs, front) if f], [y for y, f in zip(ys, front) if f], color="#d1495b",
                 label="Pareto front", zorder=3)
    line = sorted((x, y) for x, y, f in zip(xs, ys, front) if f)
    if len(line) > 1:
        axes.plot([p[0] for p in line], [p[1] for p in line], color="#d1495b", linewidth=1, zorder=1)
    for row, x, y in zip(done, xs, ys):
        axes.annotate(row["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if kind == "params" and xs:
        axes.set_xscale("log")
    if not xs:
        axes.text(0.5, 0.5, "no cell finished", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel(label)
    axes.set_ylabel(f"{metric} ({'higher' if report['higher_is_better'] else 'lower'} is better)")
    axes.set_title(f"{report['name']}: {metric} vs {label.split(' (')[0]}")
    axes.grid(True, alpha=0.3)
    if xs:
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def page(report: dict, images: dict[str, Path]) -> str:
    """A self-contained HTML page: the table and both plots (inlined as data URIs)."""
    header, body = _header(report), table_rows(report)
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = []
    for row, data in zip(body, report["rows"]):
        style = ' class="failed"' if data["status"] != "ok" else (' class="front"' if data.get("pareto") else "")
        if data["status"] != "ok":
            trs.append(f"<tr{style}><td>{html.escape(row[0])}</td><td colspan={len(header) - 1}>{html.escape(row[1])}</td></tr>")
        else:
            trs.append(f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    pictures = "".join(
        f'<figure><img alt="{html.escape(kind)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"></figure>' for kind, path in images.items())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Sweep " + html.escape(report["name"]) + "</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}tr.front{background:#fdecee}"
        "tr.failed{color:#a00}figure{display:inline-block;margin:1em}</style></head><body>"
        f"<h1>Sweep {html.escape(report['name'])}</h1><p>{html.escape(report['task'])}, metric "
        f"{html.escape(report['metric'])}; reference: {html.escape(str(report['reference']))}; created "
        f"{html.escape(report['created'])}. Highlighted rows are on the Pareto front ({html.escape(report['metric'])} vs "
        f"peak memory vs trainable parameters).</p><table><tr>{cells}</tr>{''.join(trs)}</table>"
        + ("<h2>Gate against the reference</h2><ul>" + "".join(
            f"<li><b>{html.escape(name)}</b>: {html.escape(why)}</li>" for name, why in gate_reasons(report)) + "</ul>"
           if gate_reasons(report) else "")
        + f"{pictures}</body></html>"
    )


def write(report: dict, folder: Path) -> dict[str, Path]:
    """Write sweep.json, report.md, report.html and the two plots into `folder`; return them by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {kind: plot(report, kind, folder / filename) for kind, (filename, _, _) in PLOTS.items()}
    files = {"json": folder / REPORT_JSON, "markdown": folder / REPORT_MD, "html": folder / REPORT_HTML}
    files["json"].write_text(json.dumps(report, indent=2))
    files["markdown"].write_text(markdown(report))
    files["html"].write_text(page(report, images))
    return {**files, **images}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_")[:200]


def publish(cfg: Config, name: str, results: list[CellResult], folder: Path, axes: dict[str, list] | None = None) -> tuple[dict, str]:
    """Build the report of a sweep's results, write its files into `folder` and record them on an
    MLflow run; return the report and the run id."""
    from tuneloop import registry

    report = build(results, cfg.gate, cfg.model.task, name)
    files = write(report, folder)
    metrics = {}
    for row in report["rows"]:
        if row["status"] != "ok":
            continue
        slug = _slug(row["name"])
        metrics.update({f"{slug}.{report['metric']}": row["metrics"][report["metric"]],
                        f"{slug}.peak_memory_mb": row["peak_memory_mb"], f"{slug}.wall_seconds": row["wall_seconds"],
                        f"{slug}.trainable_params": row["trainable_params"]})
    params = {"metric": report["metric"], "reference": str(report["reference"]), "cells": str(len(report["rows"])),
              "failed": str(sum(r["status"] != "ok" for r in report["rows"])), "axes": json.dumps(axes or {})}
    run_id = registry.record_sweep(cfg.registry, name, files, metrics, params)
    return report, run_id
