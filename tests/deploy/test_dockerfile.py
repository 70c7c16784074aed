"""deploy/Dockerfile: parsed, linted and its build stage rehearsed. No Docker engine runs on the
test machines, so the image itself is not built here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
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


def _glob_regex(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: `*` stays within one path element, `**`
    spans any number of them."""
    regex = ""
    for piece in re.split(r"(\*\*/|\*\*|\*|\?)", glob):
        regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
            piece, re.escape(piece)
        )
    return re.compile(regex + r"\Z")


def _context_excludes(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` out of the build context: the last pattern that
    matches the path or one of its parent directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        regex = _glob_regex(pattern.removeprefix("!"))
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not pattern.startswith("!")
    return excluded


def _dockerignore() -> list[str]:
    text = (REPO / ".dockerignore").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _context_sources() -> list[str]:
    """The build-context paths the Dockerfile copies (COPY --from copies between stages)."""
    sources = []
    for word, args in instructions(DOCKERFILE.read_text()):
        if word == "COPY" and not args.startswith("--from"):
            sources.extend(args.split()[:-1])
    return sources


def test_build_context_holds_what_is_copied_and_nothing_local() -> None:
    patterns = _dockerignore()
    for source in _context_sources():
        assert not _context_excludes(source, patterns), source
    for local in (".venv", ".git", ".kafka/jars", "tests", "bench", "detector/__pycache__"):
        assert _context_excludes(local, patterns), local
    assert _context_excludes("detector/stream/__pycache__/scoring.nbi", patterns)
    assert not _context_excludes("detector/samples/nab-sample.jsonl", patterns)


def test_build_stage_builds_the_package_from_the_copied_files_alone(tmp_path: Path) -> None:
    """The build stage's `pip install .` sees only what its COPY lines bring: build a wheel
    from exactly those files and check it carries the code and the bundled sample."""
    context = tmp_path / "src"
    patterns = _dockerignore()
    for source in _context_sources():
        if source == "config.example.toml":  # copied by the runtime stage, not built
            continue
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(
                origin,
                context / source,
                ignore=lambda folder, names: [
                    name
                    for name in names
                    if _context_excludes(str((Path(folder) / name).relative_to(REPO)), patterns)
                ],
            )
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(origin, context / source)
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("detector-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "detector/cli.py" in names
    assert "detector/samples/nab-sample.jsonl" in names
    assert not any("__pycache__" in name for name in names)


def test_hadolint_finds_nothing() -> None:
    """hadolint (from PyPI, the test extra) on the Dockerfile: no warning of any level."""
    binary = Path(sys.prefix) / "bin" / "hadolint"
    result = subprocess.run(
        [str(binary), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
