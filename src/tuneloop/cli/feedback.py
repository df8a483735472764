"""`tuneloop feedback`: join later-arriving labels to logged requests, checked against the versions that served them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from tuneloop import feedback, registry
from tuneloop.cli.context import CONFIG_HELP, config_for
from tuneloop.cli.output import show_json, show_table

app = typer.Typer(help="Labels for logged requests (feedback), joined by request id.", no_args_is_help=True)


@app.command("add")
def add(
    file: Path = typer.Argument(..., help="CSV, TSV or JSONL file with request_id and label columns."),
    log: Path = typer.Option(..., "--log", help="The traffic log (.jsonl) the requests were logged to."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check every row (known request, one label, a label of the version that served it), then append all or none.

    Labels are stored beside the log (traffic.jsonl -> traffic.feedback.jsonl), each with the request it labels.
    """
    cfg = config_for(config)
    # the version that served a request knows which labels it could have predicted; data.labels may be unset
    added = feedback.add_feedback(file, log, cfg.registry.model_name,
                                  lambda version: registry.show(cfg.registry, version)["record"]["labels"])
    if added.skipped.total:
        typer.echo(f"warning: {added.skipped.summary(str(log))}", err=True)
    if as_json:
        show_json({"store": str(added.store), "rows": added.rows, "labels": added.labels, "versions": added.versions,
                   "skipped": added.skipped.counts})
        return
    typer.echo(f"added {added.rows} label(s) to {added.store}")
    show_table([{"label": label, "rows": rows} for label, rows in sorted(added.labels.items())], ["label", "rows"])
