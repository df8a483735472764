"""`tuneloop registry`: what is registered, which version serves, every alias move, and the moves themselves."""

from __future__ import annotations

import json

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from tuneloop import registry
from tuneloop.cli.context import CONFIG_HELP, config_for
from tuneloop.cli.output import show_json, show_table
from tuneloop.errors import ConfigError, RegistryError

app = typer.Typer(help="The MLflow model registry.", no_args_is_help=True)

CONFIG = typer.Option(None, "--config", help=CONFIG_HELP)
JSON = typer.Option(False, "--json", help="Print JSON.")
REASON = typer.Option(..., "--reason", help="Why (kept in the history).")
DRY_RUN = typer.Option(False, "--dry-run", help="Show the plan and change nothing.")
YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")
HISTORY_COLUMNS = ["number", "at", "alias", "kind", "from", "to", "status", "actor", "reason"]


def _reason(text: str) -> str:
    if not text.strip():
        raise ConfigError("--reason is empty; say why, for the history (for example --reason 'v7 mislabels refunds')")
    return text.strip()


def _confirm(plan: str, dry_run: bool, yes: bool, as_json: bool) -> bool:
    """Show the plan; return whether to carry it out."""
    if not as_json:
        typer.echo(plan)
    if dry_run:
        if not as_json:
            typer.echo("dry run: nothing was changed")
        return False
    if yes:
        return True
    typer.echo("go ahead? [y/N] ", err=True, nl=False)  # stderr: --json output stays JSON
    answer = sys.stdin.readline()
    if not answer.endswith("\n") or not sys.stdin.isatty():
        typer.echo("", err=True)  # the error starts a line of its own
    if answer.strip().lower() not in ("y", "yes"):  # end of input counts as no
        raise RegistryError("not confirmed; nothing was changed (pass --yes to skip the question)")
    return True


@app.command("status")
def status(config: Optional[Path] = CONFIG, as_json: bool = JSON) -> None:
    """Show versions (newest first) with aliases, gate verdicts and metrics, and the alias history."""
    cfg = config_for(config)
    state = registry.status(cfg.registry)
    if as_json:
        show_json(state)
        return
    typer.echo(f"model {state['model']} at {cfg.registry.tracking_uri}")
    if not state["versions"]:
        typer.echo("no versions registered yet; run `tuneloop run`")
        return
    for row in state["versions"]:
        row["created"] = datetime.fromtimestamp(row["created"] / 1000).strftime("%Y-%m-%d %H:%M")
        row["data_rev"] = (row["data_rev"] or "")[:8]
    show_table(state["versions"], ["version", "aliases", "gate", "promotion", "method", "metric", "score", "champion_score",
                                   "data_rev", "created", "reasons"], {"reasons": 70})
    if state["history"]:
        typer.echo("\nalias moves:")
        show_table(state["history"], HISTORY_COLUMNS, {"reason": 60, "at": 23})


@app.command("promote")
def promote(
    version: str = typer.Argument(..., help="Version number to make champion."),
    reason: str = REASON, dry_run: bool = DRY_RUN, yes: bool = YES, config: Optional[Path] = CONFIG, as_json: bool = JSON,
) -> None:
    """Make a version that passed the gate champion (compare-and-set against the champion seen now)."""
    cfg = config_for(config)
    why = _reason(reason)
    version = registry.check_promotable(cfg.registry, version)  # before the plan: a dry run checks too
    champion = registry.alias_of(cfg.registry, registry.CHAMPION)
    if champion == version:
        if as_json:
            show_json({"from": champion, "to": None, "moved": False, "dry_run": dry_run})
        else:
            typer.echo(f"version {version} is already champion; nothing to do")
        return
    plan = f"promote {cfg.registry.model_name}: champion {champion or 'unset'} -> {version} ({why})"
    moved = _confirm(plan, dry_run, yes, as_json)
    if moved:
        registry.promote(cfg.registry, version, champion, why)
    if as_json:
        show_json({"from": champion, "to": version, "moved": moved, "dry_run": dry_run})
    elif moved:
        typer.echo(f"champion is now version {version} (was {champion or 'unset'})")


@app.command("rollback")
def rollback(
    to: Optional[str] = typer.Option(None, "--to", help="Version to roll back to (default: the champion before this one)."),
    reason: str = REASON, dry_run: bool = DRY_RUN, yes: bool = YES, config: Optional[Path] = CONFIG, as_json: bool = JSON,
) -> None:
    """Move the champion back to the previous good version (idempotent: a done rollback is not repeated)."""
    cfg = config_for(config)
    why = _reason(reason)
    current, target = registry.rollback_plan(cfg.registry, to)
    if target is None:
        if as_json:
            show_json({"from": current, "to": None, "moved": False, "dry_run": dry_run})
        elif to is not None:
            typer.echo(f"version {current} is already champion; nothing to do")
        else:
            typer.echo(f"champion is version {current}, already rolled back; nothing to do (name --to VERSION to go further)")
        return
    plan = f"roll back {cfg.registry.model_name}: champion {current} -> {target} ({why})"
    moved = _confirm(plan, dry_run, yes, as_json)
    if moved:
        registry.rollback(cfg.registry, why, target, expected=current)
    if as_json:
        show_json({"from": current, "to": target, "moved": moved, "dry_run": dry_run})
    elif moved:
        typer.echo(f"champion is now version {target} (was {current})")


def _when(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--at {text!r} is not an ISO time; write e.g. 2026-12-01T14:30 or 2026-12-01T14:30:00+00:00") from None
    return when if when.tzinfo else when.astimezone()  # a time without a zone is local time


@app.command("history")
def history(
    at: Optional[str] = typer.Option(None, "--at", help="Say which version was champion at this ISO time."),
    config: Optional[Path] = CONFIG, as_json: bool = JSON,
) -> None:
    """List every alias move (and every attempt that lost), oldest first; or the champion at one time."""
    cfg = config_for(config)
    if at is not None:
        when = _when(at)
        entry = registry.champion_at(cfg.registry, when)
        answer = {"at": when.astimezone(timezone.utc).isoformat(), "champion": entry.to_version if entry else None,
                  "since": entry.at if entry else None, "claim": entry.number if entry else None}
        if as_json:
            show_json(answer)
        elif entry is None:
            typer.echo(f"no champion at {answer['at']}")
        else:
            typer.echo(f"champion at {answer['at']}: version {entry.to_version} (since {entry.at}, {entry.kind} by {entry.actor})")
        return
    entries = [entry.to_dict() for entry in registry.history(cfg.registry)]
    if as_json:
        show_json(entries)
    elif not entries:
        typer.echo("no alias moves yet")
    else:
        show_table(entries, HISTORY_COLUMNS, {"reason": 60, "at": 23})


@app.command("show")
def show(version: str = typer.Argument(..., help="Version number, or champion / challenger."),
         config: Optional[Path] = CONFIG, as_json: bool = JSON) -> None:
    """Show one version: its contract, metrics, gate reasons, aliases, moves and dossier."""
    cfg = config_for(config)
    found = registry.show(cfg.registry, version)
    if as_json:
        show_json(found)
        return
    record = found["record"]
    typer.echo(f"{found['model']} version {found['version']}  aliases: {', '.join(found['aliases']) or '-'}  "
               f"gate: {record['gate']}  promotion: {found['promotion'] or '-'}")
    for key in ("base_model", "base_sha256", "tokenizer_sha256", "task", "method", "labels", "data_repo", "data_rev",
                "data_path", "config_sha256", "pipeline_run", "champion_version"):
        typer.echo(f"  {key}: {record[key]}")
    typer.echo(f"  method_config: {json.dumps(record['method_config'])}  quantization: {record['quantization'].get('bits', 0)}-bit")
    started = record.get("strategy") or "fresh"
    replayed = "; ".join(f"{r['rows']} rows of {r['path']}@{str(r['rev'])[:8]}" for r in record.get("replay_sources") or [])
    typer.echo(f"  strategy: {started}{' from version ' + record['parent_version'] if record.get('parent_version') else ''}"
               f"  replay: {replayed or '-'}")
    typer.echo(f"  libraries: {', '.join(f'{k} {v}' for k, v in sorted(record['libraries'].items()))}")
    typer.echo("  metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(record["metrics"].items())))
    typer.echo(f"  efficiency: {efficiency(found['metrics'])}")
    typer.echo("gate reasons:")
    for line in record["gate_reasons"]:
        typer.echo(f"  - {line}")
    typer.echo(f"dossier: {found['dossier'] or '- (registered before dossiers existed)'}")


@app.command("export")
def export(version: str = typer.Argument(..., help="Version number, or champion / challenger."),
           out: Path = typer.Option(..., "--out", help="New folder for the merged model."),
           config: Optional[Path] = CONFIG) -> None:
    """Write a version as one standalone model: its adapter merged into the unquantized base (safetensors)."""
    import tempfile

    from tuneloop import modeling

    cfg = config_for(config)
    with tempfile.TemporaryDirectory(prefix="tuneloop-export-") as scratch:
        fetched = registry.fetch(cfg.registry, version, Path(scratch) / "version")
        try:
            modeling.merge_adapter(fetched.adapter_dir, out, modeling.pick_device(cfg.runtime.device), base=cfg.model.base)
        except RegistryError as exc:
            raise RegistryError(f"version {fetched.version} of {cfg.registry.model_name}: {exc}") from exc
    typer.echo(f"version {fetched.version} merged into its base -> {out}")


def efficiency(metrics: dict[str, float]) -> str:
    """A run's cost figures on one line; '-' for the figures a run registered before they existed lacks."""
    def shown(key: str, form: str) -> str:
        return form.format(metrics[key]) if key in metrics else "-"

    return ", ".join([
        f"{shown('trainable_params', '{:,.0f}')} of {shown('total_params', '{:,.0f}')} params trainable "
        f"({shown('trainable_percent', '{:.2f}')}%)",
        f"peak memory {shown('peak_memory_mb', '{:,.0f}')} MB", f"wall {shown('wall_seconds', '{:,.1f}')} s",
        f"{shown('samples_per_second', '{:,.1f}')} samples/s", f"{shown('tokens_per_second', '{:,.0f}')} tokens/s",
        f"saved {shown('adapter_bytes', '{:,.0f}')} bytes",
        f"latency p50 {shown('latency_p50_ms', '{:.2f}')} / p95 {shown('latency_p95_ms', '{:.2f}')} ms",
        f"cost {shown('cost', '{:.4f}')}",
    ])


@app.command("repair")
def repair(config: Optional[Path] = CONFIG, as_json: bool = JSON) -> None:
    """Settle what a crashed promotion left: claims whose process died, versions left pending."""
    cfg = config_for(config)
    fixed = registry.repair(cfg.registry)
    if as_json:
        show_json(fixed)
        return
    if not fixed["claims"] and not fixed["versions"]:
        typer.echo("nothing to repair")
    for claim in fixed["claims"]:
        typer.echo(f"claim {claim['number']} ({claim['alias']} {claim['from'] or 'unset'} -> {claim['to']}): {claim['status']}")
    for version in fixed["versions"]:
        typer.echo(f"version {version['version']}: {version['promotion']}")
