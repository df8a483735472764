"""The continuous-training pipeline compiles to KFP IR with the intended graph.

(Running it is covered through the CLI in test_cli.py and on real data in test_real_data.py.)
"""

from __future__ import annotations

import pytest
import yaml

from tuneloop.pipelines.launcher import compile_pipeline

STEPS = ["validate-data", "train-adapter", "evaluate-candidate", "gate-candidate", "register-candidate"]


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> dict:
    return yaml.safe_load(compile_pipeline(tmp_path_factory.mktemp("ir") / "ct.yaml").read_text())


def test_steps_and_their_edges(ir):
    tasks = ir["root"]["dag"]["tasks"]
    assert set(tasks) == set(STEPS) | {"condition-1"}
    after = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    assert after["validate-data"] == set()
    assert after["train-adapter"] == {"validate-data"}
    assert after["evaluate-candidate"] == {"validate-data", "train-adapter"}
    assert after["gate-candidate"] == {"evaluate-candidate"}
    assert {"gate-candidate", "train-adapter", "validate-data"} <= after["register-candidate"]


def test_promotion_happens_only_inside_the_gate_branch(ir):
    condition = ir["root"]["dag"]["tasks"]["condition-1"]
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--gate-candidate-Output'] == true"
    assert "register-candidate" in condition["dependentTasks"]
    branch = ir["components"]["comp-condition-1"]["dag"]["tasks"]
    assert set(branch) == {"promote-candidate"}
    inputs = branch["promote-candidate"]["inputs"]["parameters"]
    assert inputs["version"]["componentInputParameter"] == "pipelinechannel--register-candidate-version"
    assert inputs["expected_champion"]["componentInputParameter"] == "pipelinechannel--evaluate-candidate-Output"


def test_no_step_is_cached_and_none_installs_packages_at_start(ir):
    tasks = {**ir["root"]["dag"]["tasks"], **ir["components"]["comp-condition-1"]["dag"]["tasks"]}
    for name, task in tasks.items():
        if name != "condition-1":
            assert not task.get("cachingOptions", {}).get("enableCache"), name
    for name, executor in ir["deploymentSpec"]["executors"].items():
        command = " ".join(executor["container"]["command"])
        assert "pip install" not in command, name
        assert executor["container"]["image"].startswith("ghcr.io/tuneloop/tuneloop:"), name


def test_training_requests_cluster_resources(ir):
    resources = ir["deploymentSpec"]["executors"]["exec-train-adapter"]["container"]["resources"]
    assert resources["resourceCpuRequest"] == "2" and resources["resourceMemoryRequest"] == "8Gi"


def test_pipeline_parameters_are_what_an_operator_changes(ir):
    assert set(ir["root"]["inputDefinitions"]["parameters"]) == {"config", "data_rev"}
