"""deploy/Dockerfile: parsed, since no image registry is reachable from the test machines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.deploy.conftest import K8S_DIR, REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\s*\\\n\s*",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_slim_base_for_both_stages() -> None:
    bases = [args for word, args in instructions(DOCKERFILE.read_text()) if word == "FROM"]
    assert len(bases) == 2
    assert all(re.match(r"python:\$\{PYTHON_VERSION\}-slim", base) for base in bases)


def test_runs_as_the_non_root_user_of_the_kubernetes_manifests() -> None:
    final = _final_stage()
    users = [args for word, args in final if word == "USER"]
    assert users == ["10001:10001"]
    statefulset = yaml.safe_load((K8S_DIR / "statefulset.yaml").read_text())
    pod_security = statefulset["spec"]["template"]["spec"]["securityContext"]
    assert (pod_security["runAsUser"], pod_security["runAsGroup"]) == (10001, 10001)


def test_entrypoint_environment_and_package() -> None:
    final = _final_stage()
    entry = [json.loads(args) for word, args in final if word == "ENTRYPOINT"]
    assert entry == [["detector"]]
    cmd = [json.loads(args) for word, args in final if word == "CMD"]
    assert cmd == [["run", "--config", "/etc/detector/config.toml"]]
    env = " ".join(args for word, args in final if word == "ENV")
    assert "NUMBA_CACHE_DIR=/var/cache/detector/numba" in env
    assert "DETECTOR_STATE__DIR=/var/lib/detector" in env
    build = " ".join(args for word, args in instructions(DOCKERFILE.read_text()) if word == "RUN")
    assert "pip install --no-cache-dir ." in build
    copied = [args for word, args in instructions(DOCKERFILE.read_text()) if word == "COPY"]
    assert any(args.split()[0] == "pyproject.toml" for args in copied)
    for source in ("pyproject.toml", "README.md", "detector", "config.example.toml"):
        assert (REPO / source).exists(), source


def test_instruction_parser_joins_continuations() -> None:
    assert instructions("# c\nRUN a \\\n    && b\nUSER x\n") == [("RUN", "a && b"), ("USER", "x")]
    assert Path(DOCKERFILE).read_text().startswith("# syntax=docker/dockerfile:1")
