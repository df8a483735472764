"""`tuneloop monitor --once` through the monitor pipeline (kfp.local), on real workspaces and the tiny model.

Each test builds its own workspace whose version 1 is champion (`tuneloop run` on 300 synthetic
tickets), writes traffic with `tuneloop predict --log` and labels with `tuneloop feedback add`, and
then runs ticks through the real entry point: the decision, its recorded run, and what the action
did to the data repository and the registry are checked.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from tests.conftest import champion_workspace, shared_texts
from tuneloop import gitrepo, modeling, registry, synthetic, tables
from tuneloop.config import load_config

TUNELOOP = shutil.which("tuneloop")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(TUNELOOP is None, reason="the tuneloop console script is not installed")]
LABELS = sorted(synthetic.LABELS)
# A retrained candidate of the tiny random model passes the gate by chance or not; a margin of 100
# points lets every one through, so the retrain lands as champion whatever the seed.
EXTRA = "policy:\n  min_new_rows: 100\n"
PASS_ALL = "gate:\n  min_accuracy: 0.0\n  min_macro_f1: 0.0\n  reject_degenerate: false\n  min_rows: 10\n  margin: 100.0\n"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TUNELOOP, *args], capture_output=True, text=True, timeout=900)


def workspace(root: Path, tiny_model: Path, gate: str = "") -> Path:
    config = champion_workspace(root / "ws", tiny_model)
    text = config.read_text() + EXTRA
    if gate:
        text = text[:text.index("gate:\n")] + gate + text[text.index("registry:\n"):]
    config.write_text(text)
    return config


def serve_batch(config: Path, texts: list[str], labels: list[str] | None, version: str | None = None) -> list[str]:
    """Predict `texts` with --log into the workspace's traffic log, then label them (when `labels` is given)."""
    log = config.parent / "traffic" / "traffic.jsonl"
    log.parent.mkdir(exist_ok=True)
    batch = config.parent / "batch.jsonl"
    batch.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    ref = ["--version", version] if version else []
    run = cli("predict", "--file", str(batch), "--log", str(log), "--json", *ref, "--config", str(config))
    assert run.returncode == 0, run.stderr
    ids = [row["request_id"] for row in json.loads(run.stdout)]
    if labels is not None:
        with open(config.parent / "labels.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["request_id", "label"])
            writer.writerows(zip(ids, labels))
        added = cli("feedback", "add", str(config.parent / "labels.csv"), "--log", str(log), "--config", str(config))
        assert added.returncode == 0, added.stderr
    return ids


def tick(config: Path) -> subprocess.CompletedProcess:
    run = cli("monitor", "--once", "--config", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def ticks(config: Path) -> list[dict]:
    from datetime import datetime, timedelta, timezone

    cfg = load_config(config)
    return registry.tick_history(cfg.registry, cfg.monitor.experiment, datetime.now(timezone.utc) - timedelta(hours=1))


def test_quiet_traffic_is_ignored_shifted_labelled_traffic_retrains_once_on_a_new_data_rev(tmp_path, tiny_model):
    config = workspace(tmp_path, tiny_model, gate=PASS_ALL)
    cfg = load_config(config)
    root = config.parent
    head = gitrepo.resolve_rev(str(root), "HEAD")

    # in-distribution traffic, labelled: no drift, no degradation, nothing done
    quiet = synthetic.generate_tickets(1, 150, seed=7)
    serve_batch(config, [t for t, _ in quiet], [label for _, label in quiet])
    log = root / "traffic" / "traffic.jsonl"
    good = json.loads(log.read_text().splitlines()[0])
    with open(log, "ab") as handle:  # malformed lines: counted and reported, never traffic, never a crash
        handle.write(b'{"request_id": "x", "time": \n')
        handle.write(json.dumps({k: v for k, v in good.items() if k != "score"}).encode() + b"\n")
        handle.write(json.dumps({**good, "request_id": "y", "latency_ms": "fast"}).encode() + b"\n")
        handle.write(json.dumps({**good, "request_id": "z", "text": "w" * 5_000_000}).encode() + b"\n")
    first = tick(config)
    assert "monitor: ignore (champion 1, key ignore@1" in first.stdout
    assert gitrepo.resolve_rev(str(root), "HEAD") == head
    assert [(t["action"], t["wanted"], t["champion"]) for t in ticks(config)] == [("ignore", "ignore", "1")]

    # shifted traffic (emotion texts), labelled: drift alarm -> retrain on a new data revision
    from tuneloop import data

    before = tables.parse_table(data.read_at(str(root), head, cfg.data.path)[0], cfg.data.path, "text", "label")
    held_out = before[tables.held_out_mask(before["text"], cfg.data.eval_fraction)]
    # with the shifted texts come 5 of the champion's held-out texts and a repeat: neither may be trained on twice
    shifted = shared_texts("emotion")[:295] + list(held_out["text"])[:5] + [shared_texts("emotion")[0].upper()]
    labels = [LABELS[i % len(LABELS)] for i in range(len(shifted))]
    serve_batch(config, shifted, labels)
    second = tick(config)
    assert "monitor: retrain (champion 1, key retrain@1" in second.stdout
    assert "retrained: version 2 gate passed" in second.stdout
    assert "champion is version 2" in second.stdout
    new_head = gitrepo.resolve_rev(str(root), "HEAD")
    assert new_head != head
    recorded = ticks(config)
    assert [(t["action"], t["key"]) for t in recorded] == [("ignore", "ignore@1"), ("retrain", "retrain@1")]
    assert recorded[1]["outcome"].startswith("retrained: version 2 gate passed: ")
    from mlflow import MlflowClient

    client = MlflowClient(cfg.registry.tracking_uri)
    for run in recorded:  # each decision with the signals behind it, and Evidently's drift report
        assert [a.path for a in client.list_artifacts(run["run_id"])] == ["decision.json", "drift"]
        assert [a.path for a in client.list_artifacts(run["run_id"], "drift")] == ["drift/drift.html"]
    def kept(run: dict) -> dict:
        folder = tmp_path / run["run_id"]
        folder.mkdir()
        return json.loads(Path(client.download_artifacts(run["run_id"], "decision.json", str(folder))).read_text())

    first_kept, second_kept = kept(recorded[0]), kept(recorded[1])
    assert first_kept["measured"]["skipped"] == {"broken_json": 1, "missing_field": 1, "wrong_type": 1, "too_long": 1}
    assert first_kept["measured"]["signals"]["window_rows"] == 150
    assert second_kept["decision"]["action"] == "retrain"
    assert any(s["alarm"] for s in second_kept["measured"]["drift"]["signals"])
    assert registry.show(cfg.registry, "2")["record"]["data_rev"] == new_head

    # the new revision holds the old rows, then every labelled text the old file lacks, once each
    after = tables.parse_table(data.read_at(str(root), new_head, cfg.data.path)[0], cfg.data.path, "text", "label")
    assert list(after["text"])[:len(before)] == list(before["text"])
    appended = list(after["text"])[len(before):]

    def norm(text: str) -> str:
        return " ".join(text.lower().split())

    known = {norm(t) for t in before["text"]}
    expected = {norm(t) for t in [t for t, _ in quiet] + shifted} - known
    assert len(appended) == len(expected)  # once each: the upper-cased repeat is the same text
    assert {norm(t) for t in appended} == expected
    assert not {norm(t) for t in appended} & {norm(t) for t in held_out["text"]}

    # the next tick judges the new champion on its own traffic, of which there is none yet
    third = tick(config)
    assert "monitor: ignore (champion 2, key ignore@2" in third.stdout
    assert gitrepo.resolve_rev(str(root), "HEAD") == new_head
    assert [(t["action"], t["champion"]) for t in ticks(config)][-1] == ("ignore", "2")


def degraded_copy(adapter: Path, dest: Path, label_index: int) -> Path:
    """The adapter with its classifier pushed to predict one label for every text."""
    shutil.copytree(adapter, dest)
    weights = dest / modeling.ADAPTER_WEIGHTS
    tensors = load_file(str(weights))
    bias = next(name for name in tensors if name.endswith("classifier.bias"))
    tensors[bias] = tensors[bias].copy()
    tensors[bias][label_index] += 1000.0
    save_file(tensors, str(weights))
    return dest


def test_a_champion_worse_than_its_predecessor_on_fresh_labels_is_rolled_back(tmp_path, tiny_model):
    config = workspace(tmp_path, tiny_model)
    cfg = load_config(config)
    one = registry.fetch(cfg.registry, "1", tmp_path / "v1")
    texts = [t for t, _ in synthetic.generate_tickets(1, 120, seed=11)]
    # what version 1 says about these texts becomes their label, so version 1 is right on every one
    truth = json.loads(cli("predict", "--file", str(_texts_file(tmp_path, texts)), "--version", "1", "--json",
                           "--config", str(config)).stdout)
    labels = [row["label"] for row in truth]
    # version 2: version 1 pushed to always answer a label version 1 gives least often on these texts
    rare = min(one.labels, key=labels.count)
    two = degraded_copy(one.adapter_dir, tmp_path / "v2", one.labels.index(rare))
    record = replace(one.record, gate="passed", gate_reasons=["test: a degraded copy of version 1"], promotion="",
                     dossier="", registered_by="")
    candidate = registry.Candidate(adapter_dir=two, record=record, params={}, metrics={}, reports={})
    assert registry.register(cfg.registry, candidate, "degraded").version == "2"
    registry.promote(cfg.registry, "2", "1", "test: promote the degraded copy")

    serve_batch(config, texts, labels)
    run = tick(config)
    assert "monitor: rollback (champion 2, key rollback@2->1" in run.stdout
    assert "rolled back 2 -> 1" in run.stdout
    assert registry.alias_of(cfg.registry, registry.CHAMPION) == "1"
    last = registry.history(cfg.registry)[-1]
    assert (last.kind, last.from_version, last.to_version, last.status) == ("rollback", "2", "1", "done")
    assert last.actor.startswith("monitor:")
    assert [(t["action"], t["rollback_to"]) for t in ticks(config)] == [("rollback", "1")]


def _texts_file(folder: Path, texts: list[str]) -> Path:
    path = folder / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_monitor_refuses_a_missing_log_and_a_bad_schedule_in_one_line(tmp_path, workspace):
    missing = cli("monitor", "--once", "--log", str(tmp_path / "nope.jsonl"), "--config", str(workspace))
    assert missing.stderr == (f"error: DataError: traffic log {str(tmp_path / 'nope.jsonl')!r} not found; "
                              "pass the file the requests were logged to\n")
    assert missing.returncode == 1
    both = cli("monitor", "--once", "--every", "15m", "--config", str(workspace))
    assert both.stderr == ("error: ConfigError: pass --once for one tick, or --every DURATION (e.g. --every 15m) "
                           "to keep watching\n")
    short = cli("monitor", "--every", "5s", "--config", str(workspace))
    assert short.stderr == ("error: ConfigError: --every 5s is shorter than 60s; a tick takes longer than that, "
                            "use --every 1m or more\n")
    assert (short.returncode, both.returncode) == (1, 1)
    cluster = workspace.parent / "cluster.yaml"
    cluster.write_text(workspace.read_text() + "runtime:\n  mode: kfp\n  host: http://127.0.0.1:9\n")
    no_log = cli("monitor", "--once", "--config", str(cluster))
    assert no_log.stderr == ("error: ConfigError: on a cluster pass --log with the traffic log's path as the pipeline's "
                             "pods see it (a mounted volume), not this machine's serve.log\n")
    retrains = cli("monitor", "--once", "--log", "/mnt/traffic/traffic.jsonl", "--config", str(cluster))
    assert retrains.stderr.startswith("error: ConfigError: a retrain commits new data to data.repo, which the monitor's "
                                      "pods cannot do with a git URL yet; on a cluster set policy.auto_retrain: false")
    assert (no_log.returncode, retrains.returncode) == (1, 1)
    assert not (workspace.parent / "mlflow.db").exists() or ticks(workspace) == []
