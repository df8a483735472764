"""The continuous-training pipeline compiles to KFP IR with the intended graph.

(Running it is covered through the CLI in test_cli.py and on real data in test_real_data.py.)
"""

from __future__ import annotations

import pytest
import yaml

from tuneloop.config import Config
from tuneloop.pipelines.launcher import compile_pipeline

IMAGE = "registry.example.com/team/tuneloop:1.2.3"
CFG = Config.model_validate({"runtime": {"image": IMAGE}})
STEPS = ["validate-data", "train-adapter", "evaluate-candidate", "gate-candidate"]
PASSED = "inputs.parameter_values['pipelinechannel--gate-candidate-Output'] == true"


def pipeline_spec(path) -> dict:
    """The pipeline document of compiled IR (the Kubernetes platform document follows it)."""
    return next(yaml.safe_load_all(path.read_text()))


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> dict:
    return pipeline_spec(compile_pipeline(tmp_path_factory.mktemp("ir") / "ct.yaml", CFG))


def branch_tasks(ir: dict) -> dict:
    """Tasks inside the gate's If/Else branches, by name."""
    found = {}
    for name, component in ir["components"].items():
        if name.startswith("comp-condition-") and not name.startswith("comp-condition-branches"):
            found.update(component["dag"]["tasks"])
    return found


def test_steps_and_their_edges(ir):
    tasks = ir["root"]["dag"]["tasks"]
    assert set(tasks) == set(STEPS) | {"condition-branches-1"}
    after = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    assert after["validate-data"] == set()
    assert after["train-adapter"] == {"validate-data"}
    assert after["evaluate-candidate"] == {"validate-data", "train-adapter"}
    assert after["gate-candidate"] == {"validate-data", "evaluate-candidate"}  # the dossier reads the snapshot
    assert "gate-candidate" in after["condition-branches-1"]


def test_promotion_happens_only_in_the_branch_the_gate_passes(ir):
    branches = ir["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    conditions = {name: task["triggerPolicy"]["condition"] for name, task in branches.items()}
    assert sorted(conditions.values()) == sorted([PASSED, f"!({PASSED})"])
    passed_branch = next(name for name, cond in conditions.items() if cond == PASSED)
    failed_branch = next(name for name, cond in conditions.items() if cond != PASSED)
    assert set(ir["components"][f"comp-{passed_branch}"]["dag"]["tasks"]) == {"promote-candidate"}
    assert set(ir["components"][f"comp-{failed_branch}"]["dag"]["tasks"]) == {"reject-candidate"}


def test_both_branches_receive_the_same_evidence(ir):
    tasks = branch_tasks(ir)
    promote, reject = (tasks[name]["inputs"] for name in ("promote-candidate", "reject-candidate"))
    assert set(promote["artifacts"]) == set(reject["artifacts"]) == {
        "snapshot", "trained", "scores", "decision", "dossier", "dossier_md"}
    assert set(promote["parameters"]) == set(reject["parameters"]) == {"config", "run_name", "job_name"}


def test_no_step_is_cached_and_none_installs_packages_at_start(ir):
    for name, task in {**ir["root"]["dag"]["tasks"], **branch_tasks(ir)}.items():
        if not name.startswith("condition"):
            assert not task.get("cachingOptions", {}).get("enableCache"), name
    for name, executor in ir["deploymentSpec"]["executors"].items():
        command = " ".join(executor["container"]["command"])
        assert "pip install" not in command, name


def test_pipeline_parameters_are_what_an_operator_changes(ir):
    assert set(ir["root"]["inputDefinitions"]["parameters"]) == {"config", "data_rev", "run_name"}
    assert ir["root"]["dag"]["outputs"]["parameters"]["Output"]["valueFromParameter"]["producerSubtask"] == "condition-branches-1"


@pytest.mark.parametrize("change,message", [
    ({"registry": {"tracking_uri": "sqlite:///mlflow.db"}, "data": {"repo": "https://git.example/data.git"}},
     "registry.tracking_uri .* is local to this machine"),
    ({"registry": {"tracking_uri": "http://mlflow:5000"}, "data": {"repo": "."}}, "data.repo .* is a local folder"),
])
def test_cluster_launcher_refuses_stores_pods_cannot_reach(change, message, tmp_path):
    from tuneloop.config import parse_config
    from tuneloop.errors import ConfigError
    from tuneloop.pipelines.launcher import launcher_for

    cfg = parse_config({"runtime": {"mode": "kfp", "host": "http://kfp.example"}, **change}, tmp_path)
    with pytest.raises(ConfigError, match=message):
        launcher_for(cfg)


def test_cluster_launcher_refuses_a_host_that_does_not_answer(tmp_path):
    import socket

    from tuneloop.config import parse_config
    from tuneloop.errors import PipelineError
    from tuneloop.pipelines.launcher import launcher_for

    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = parse_config({"runtime": {"mode": "kfp", "host": f"http://127.0.0.1:{port}"},
                        "registry": {"tracking_uri": "http://mlflow:5000"}, "data": {"repo": "https://git.example/d.git"}})
    with pytest.raises(PipelineError, match=rf"^runtime.host 'http://127.0.0.1:{port}' does not answer \(.*refused.*\); "
                                            "check the KFP endpoint and your network$"):
        launcher_for(cfg)


def test_a_failing_step_surfaces_as_its_own_one_line_error(tmp_path, tickets_csv):
    """A step that raises inside the local runner comes back as the same error class and message."""
    from tuneloop import data, workspace
    from tuneloop.config import load_config
    from tuneloop.errors import DataError
    from tuneloop.pipelines.launcher import LocalLauncher

    config = workspace.init(tmp_path / "ws", config_text="data: {path: data/tickets.csv}\n")
    rev = data.add_dataset(config.parent, tickets_csv, "tickets", load_config(config).data).rev
    config.write_text("data: {path: data/tickets.csv, labels: [billing, technical]}\n")  # after the data landed
    cfg = load_config(config)
    with pytest.raises(DataError, match=r"problem\(s\) in data/tickets.csv@.*label 'account' is not in the allowed labels.*"
                                        r"\(step validate-data; log: .*\.log\)$"):
        LocalLauncher(cfg.runtime.pipeline_root).run(cfg, rev)
    assert list((config.parent / "runs").glob("ct-*.log")), "the full step output is kept in a log file"


def test_the_gate_step_publishes_the_dossier_as_html_for_the_kfp_ui(ir):
    outputs = ir["components"]["comp-gate-candidate"]["outputDefinitions"]["artifacts"]
    assert {name: spec["artifactType"]["schemaTitle"] for name, spec in outputs.items()} == {
        "decision": "system.Artifact", "dossier": "system.HTML", "dossier_md": "system.Markdown"}


# --- the monitor pipeline -------------------------------------------------------------------------

ACTION = "inputs.parameter_values['pipelinechannel--decide-action-Output']"


@pytest.fixture(scope="module")
def monitor_ir(tmp_path_factory) -> dict:
    return pipeline_spec(compile_pipeline(tmp_path_factory.mktemp("ir") / "monitor.yaml", CFG, "monitor"))


def test_monitor_measures_then_decides_then_branches_on_the_action(monitor_ir):
    tasks = monitor_ir["root"]["dag"]["tasks"]
    assert set(tasks) == {"measure-traffic", "decide-action", "condition-branches-1"}
    assert set(tasks["decide-action"].get("dependentTasks", [])) == {"measure-traffic"}
    assert set(monitor_ir["root"]["inputDefinitions"]["parameters"]) == {"config", "log_path"}
    branches = monitor_ir["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    conditions = {task["componentRef"]["name"]: task["triggerPolicy"]["condition"] for task in branches.values()}
    assert conditions == {
        "comp-condition-2": f"{ACTION} == 'retrain'",
        "comp-condition-3": f"!({ACTION} == 'retrain') && {ACTION} == 'rollback'",
    }


def test_a_retrain_runs_the_continuous_training_pipeline_nested_on_the_new_rev(monitor_ir):
    retrain = monitor_ir["components"]["comp-condition-2"]["dag"]["tasks"]
    assert set(retrain) == {"prepare-retrain-data", "continuous-training", "note-retrain-outcome"}
    rev = retrain["continuous-training"]["inputs"]["parameters"]["data_rev"]["taskOutputParameter"]
    assert rev == {"outputParameterKey": "Output", "producerTask": "prepare-retrain-data"}
    assert set(retrain["note-retrain-outcome"]["dependentTasks"]) == {"continuous-training"}
    nested = monitor_ir["components"]["comp-continuous-training"]["dag"]["tasks"]
    assert set(nested) == set(STEPS) | {"condition-branches-1"}
    rollback = monitor_ir["components"]["comp-condition-3"]["dag"]["tasks"]
    assert set(rollback) == {"rollback-champion"}


def test_the_drift_report_is_an_html_artifact(monitor_ir):
    outputs = monitor_ir["components"]["comp-measure-traffic"]["outputDefinitions"]["artifacts"]
    assert outputs["drift_report"]["artifactType"]["schemaTitle"] == "system.HTML"


def test_an_unknown_pipeline_name_is_refused(tmp_path):
    from tuneloop.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^no pipeline named 'watch'; choose one of continuous-training, monitor, sweep$"):
        compile_pipeline(tmp_path / "x.yaml", CFG, "watch")


def test_every_step_runs_in_the_configured_image(ir, monitor_ir):
    for compiled, count in ((ir, 6), (monitor_ir, 11)):  # monitor: 5 own steps and the nested cycle's 6
        images = [executor["container"]["image"] for executor in compiled["deploymentSpec"]["executors"].values()]
        assert images == [IMAGE] * count


def test_a_failing_step_records_its_error_class_and_message(tmp_path):
    """What the launcher reads instead of the step's log text: the record start_step's hook writes."""
    import os
    import subprocess
    import sys

    from tuneloop.progress import ERRORS_ENV, last_error_record

    code = ("from tuneloop.progress import start_step; from tuneloop.errors import DataError; start_step(); "
            "raise DataError('row 3: label is empty')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, ERRORS_ENV: str(tmp_path / "errors")})
    assert done.returncode == 1 and "DataError: row 3: label is empty" in done.stderr  # the traceback still shows
    assert last_error_record(tmp_path / "errors") == {"class": "tuneloop.errors.DataError", "message": "row 3: label is empty"}
    builtin = subprocess.run([sys.executable, "-c", "from tuneloop.progress import start_step; start_step(); {}['k']"],
                             capture_output=True, text=True, env={**os.environ, ERRORS_ENV: str(tmp_path / "more")})
    assert builtin.returncode == 1 and last_error_record(tmp_path / "more") == {"class": "KeyError", "message": "'k'"}
    assert last_error_record(tmp_path / "none") is None


@pytest.mark.parametrize("line,shown", [
    ("    14:39:44 tuneloop.validation validated data/tickets.csv@75e38f8e: 200 train rows", True),
    ("14:39:44 tuneloop.training epoch 1/2 step 20/46 loss 0.9475", True),
    ("tuneloop.errors.DataError: row 101 (train): text is empty", False),
    ("    raise DataError(f'{problems} in tuneloop.data')", False),
    ("I1203 14:39:44.123 executor.py:100] Executing task 'validate-data'", False),
])
def test_only_tuneloops_own_progress_lines_reach_the_console(line, shown):
    from tuneloop.progress import is_progress_line

    assert is_progress_line(line) is shown
