#!/usr/bin/env bash
# The whole test suite, from nothing: a virtual environment in .venv, the package and its
# test dependencies, then pytest. Integration tests start their own Kafka broker
# (deploy/kafka/kafka.sh, jars resolved by Maven), unless KAFKA_BOOTSTRAP_SERVERS is set.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not integration"`.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "tests/run.sh: $python is $("$python" --version 2>&1); detector needs Python >= 3.11" >&2
    exit 2
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
# kustomize renders deploy/k8s for tests/deploy: built from source through the Go module proxy
# into .venv/bin (about 45 s on a cold Go cache, nothing once installed).
kustomize_version=v5.8.1
if [ "$(.venv/bin/kustomize version 2>/dev/null)" != "$kustomize_version" ]; then
    if command -v go >/dev/null; then
        GOBIN="$PWD/.venv/bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$kustomize_version"
    else
        echo "tests/run.sh: go not found, so no kustomize: tests/deploy/test_k8s.py will skip" >&2
    fi
fi
if [ -x deploy/kafka/kafka.sh ] && [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    deploy/kafka/kafka.sh fetch  # resolve the broker's jars up front, so their download is not a test's timeout
fi
exec .venv/bin/python -m pytest "$@"
