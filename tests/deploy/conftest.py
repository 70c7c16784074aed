"""Tools of the deployment tests: kustomize, installed by tests/run.sh into .venv/bin."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "deploy" / "k8s"


def kustomize_binary() -> str | None:
    in_venv = Path(sys.prefix) / "bin" / "kustomize"
    return str(in_venv) if in_venv.is_file() else shutil.which("kustomize")


@pytest.fixture(scope="session")
def kustomize() -> str:
    binary = kustomize_binary()
    if binary is None:
        pytest.skip("kustomize not installed: tests/run.sh installs it into .venv/bin with Go")
    return binary


def kustomize_build(kustomize: str, directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kustomize, "build", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kustomize build {directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
