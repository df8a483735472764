"""`tuneloop predict`: classify texts with a registered version, loaded through the adapter contract."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer

from tuneloop import evaluation, generation, modeling, registry, tasks, traffic
from tuneloop.cli.context import CONFIG_HELP, config_for
from tuneloop.cli.output import show_json
from tuneloop.config import Config
from tuneloop.errors import ConfigError, DataError, RegistryError

SHOWN = 60  # characters of each text on its line; --json carries the whole text


def predict(
    texts: Optional[list[str]] = typer.Argument(None, metavar="TEXT", help="Texts to classify (or --file)."),
    file: Optional[Path] = typer.Option(
        None, "--file", help="One text per line, or a .csv/.tsv/.jsonl with a data.text_column column (default text)."),
    alias: Optional[str] = typer.Option(None, "--alias", help="champion or challenger (default: champion)."),
    version: Optional[int] = typer.Option(None, "--version", min=1, help="A version number, instead of --alias."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {text, label, score} (and request_id with --log)."),
    log: Optional[Path] = typer.Option(
        None, "--log", help="Append one traffic-log row per text to this .jsonl file (latency_ms: the batch's mean per row)."),
) -> None:
    """Classify texts with a registered version: label, probability of the label, text (or, for a
    seq2seq or causal_lm version, the output it writes for each source or prompt)."""
    cfg = config_for(config)
    ref = _ref(alias, version)
    rows = _inputs(texts or [], file, cfg.data.text_column)
    if log is not None:  # before any work: a log that cannot take the rows fails in one line, nothing predicted
        tasks.require_labels(cfg.model.task, "tuneloop predict --log")
        traffic.check_log(log)
        _check_loggable(rows)
    with tempfile.TemporaryDirectory(prefix="tuneloop-predict-") as scratch:
        fetched = registry.fetch(cfg.registry, ref, Path(scratch) / "version")
        try:
            task = modeling.read_adapter_meta(fetched.adapter_dir).task  # the version's own task, whatever the config says
            if tasks.get(task).generative:
                if log is not None:
                    tasks.require_labels(task, "tuneloop predict --log")
                _write(fetched, rows, cfg, as_json)
                return
            labels, scores, latency_ms = _scored(fetched, rows, cfg)
        except RegistryError as exc:
            raise RegistryError(f"version {fetched.version} of {cfg.registry.model_name}: {exc}") from exc
    results = [{"text": t, "label": lab, "score": round(s, 4)} for t, lab, s in zip(rows, labels, scores)]
    if log is not None:
        served = datetime.now(timezone.utc)  # one time for the batch: when its predictions were made
        logged = [traffic.TrafficRow(traffic.new_request_id(), served, cfg.registry.model_name, fetched.version, text, label,
                                     score, latency_ms) for text, label, score in zip(rows, labels, scores)]
        with traffic.TrafficWriter(log) as writer:
            writer.append(logged)
        results = [{"request_id": row.request_id, **result} for row, result in zip(logged, results)]
    if as_json:
        show_json(results)
        return
    width = max(map(len, labels))
    for text, label, score in zip(rows, labels, scores):
        shown = " ".join(text.split())
        typer.echo(f"{label.ljust(width)}  {score:.4f}  {shown if len(shown) <= SHOWN else shown[:SHOWN - 1] + '…'}")


def _write(fetched: registry.Fetched, rows: list[str], cfg: Config, as_json: bool) -> None:
    """Print the output a generative version writes for each text (generation settings from the config)."""
    device = modeling.pick_device(cfg.runtime.device)
    model, tokenizer, meta = modeling.load_adapter(fetched.adapter_dir, device, base=cfg.model.base)
    outputs = generation.generate(model, tokenizer, meta.task, rows, meta.max_length, cfg.generation, device,
                                  cfg.train.eval_batch_size)
    if as_json:
        show_json([{"text": text, "output": output} for text, output in zip(rows, outputs)])
        return
    for text, output in zip(rows, outputs):
        shown = " ".join(text.split())
        typer.echo(f"{shown if len(shown) <= SHOWN else shown[:SHOWN - 1] + '…'}\n  -> {output}")


def _ref(alias: str | None, version: int | None) -> str:
    """The registry reference the options name: an alias, a version number, or the champion."""
    if alias is not None and version is not None:
        raise ConfigError(f"--alias {alias} and --version {version} are exclusive; pass one of them (default: --alias champion)")
    if version is not None:
        return str(version)
    if alias is not None and alias not in (registry.CHAMPION, registry.CHALLENGER):
        raise ConfigError(f"--alias {alias!r} is not an alias; use champion or challenger, or --version N")
    return alias or registry.CHAMPION


def _inputs(texts: list[str], file: Path | None, column: str) -> list[str]:
    """The texts to classify, from the arguments or from --file."""
    if texts and file is not None:
        raise ConfigError("pass texts as arguments or --file FILE, not both")
    if file is None:
        if not texts:
            raise ConfigError("no texts to classify; pass them as arguments or with --file FILE")
        empty = next((i for i, text in enumerate(texts, start=1) if not text.strip()), None)
        if empty is not None:
            raise ConfigError(f"text argument {empty} is empty; pass non-empty texts")
        return list(texts)
    rows = _read_texts(file, column)
    if not rows:
        raise DataError(f"--file {str(file)!r} holds no texts; write one text per line, or a .csv/.jsonl with a {column!r} column")
    return rows


def _read_texts(file: Path, column: str) -> list[str]:
    """Read texts: the `column` of a .csv/.tsv/.jsonl, else every non-blank line.

    `tables.parse_table` needs a label column too, which texts to classify do not have.
    """
    if not file.is_file():
        raise DataError(f"--file {str(file)!r} not found; pass an existing file")
    try:
        text = file.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise DataError(f"--file {str(file)!r} is not UTF-8 (byte {exc.start}); re-save it as UTF-8") from None
    suffix = file.suffix.lower()
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="," if suffix == ".csv" else "\t")
        if column not in (reader.fieldnames or []):
            raise DataError(f"--file {str(file)!r} has no column {column!r} (found: {', '.join(reader.fieldnames or []) or 'none'}); "
                            "name the text column text, or set data.text_column")
        try:
            records = [(reader.line_num, row.get(column)) for row in reader]
        except csv.Error as exc:  # a quote left open, or a field past the csv module's 131072 characters
            raise DataError(f"--file {str(file)!r}: line {reader.line_num} cannot be parsed ({exc}); fix the quoting") from None
    elif suffix == ".jsonl":
        records = [(number, _json_text(file, number, line, column))
                   for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    else:
        return [line for line in text.splitlines() if line.strip()]
    bad = next((number for number, value in records if not isinstance(value, str) or not value.strip()), None)
    if bad is not None:
        raise DataError(f"--file {str(file)!r}: line {bad} has no {column!r} text; fill it in or remove the line")
    return [value for _, value in records]


def _json_text(file: Path, number: int, line: str, column: str) -> Any:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise DataError(f"--file {str(file)!r}: line {number} is not valid JSON ({exc}); fix or remove the line") from None
    return record.get(column) if isinstance(record, dict) else None


def _check_loggable(texts: list[str]) -> None:
    """Refuse texts the traffic log cannot hold (too long, or not valid Unicode) before predicting any."""
    for number, text in enumerate(texts, start=1):
        problem = traffic.text_problem(text)
        if problem:
            raise DataError(f"text {number} {problem}, so the traffic log cannot hold it; fix it, or predict without --log")


def _scored(fetched: registry.Fetched, texts: list[str], cfg: Config) -> tuple[list[str], list[float], float]:
    """Predict each text's label and its softmax probability, and the mean milliseconds per text, with the
    adapter on the config's base model."""
    meta = modeling.read_adapter_meta(fetched.adapter_dir)
    if meta.labels != fetched.labels:
        raise RegistryError(f"the adapter's labels {meta.labels} differ from the version's labels tag {fetched.labels}; "
                            "re-register the adapter")
    device = modeling.pick_device(cfg.runtime.device)
    return evaluation.predict_scored(fetched.adapter_dir, texts, device, cfg.train.eval_batch_size, base=cfg.model.base)
