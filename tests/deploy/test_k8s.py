"""deploy/k8s: rendered by the real kustomize, validated offline against the Kubernetes
OpenAPI schemas (kubernetes-validate bundles them; strict: unknown fields are errors), then
checked for what the daemon relies on."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from detector.cli import build_parser
from detector.config import load_settings
from tests.deploy.conftest import K8S_DIR, REPO, kustomize_build

# The oldest Kubernetes the manifests are meant for, and the newest the validator knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())


def schema_errors(docs: list[dict[str, Any]]) -> list[str]:
    errors = []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                errors.append(f"{name} (k8s {version}) at {where}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                errors.append(f"{name}: {exc.message}")  # a kind we cannot check is an error
    return errors


@pytest.fixture(scope="module")
def docs(kustomize: str) -> list[dict[str, Any]]:
    return kustomize_build(kustomize, K8S_DIR)


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    pod = (spec["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else spec)["template"]
    (container,) = pod["spec"]["containers"]
    return container


def test_manifests_pass_the_kubernetes_schemas(docs: list[dict[str, Any]]) -> None:
    assert sorted(d["kind"] for d in docs) == sorted(
        [
            "ConfigMap",
            "CronJob",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Service",
            "Service",
            "StatefulSet",
        ]
    )
    assert schema_errors(docs) == []


@pytest.mark.parametrize(
    ("good", "bad", "expected"),
    [
        ("          livenessProbe:", "          livenesProbe:", "'livenesProbe' was unexpected"),
        ("  replicas: 2", '  replicas: "two"', "spec.replicas: 'two' is not of type"),
    ],
    ids=["misspelled-field", "wrong-type"],
)
def test_a_broken_manifest_fails(
    kustomize: str, tmp_path: Path, good: str, bad: str, expected: str
) -> None:
    broken = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, broken)
    statefulset = broken / "statefulset.yaml"
    text = statefulset.read_text()
    assert text.count(good) == 1
    statefulset.write_text(text.replace(good, bad))
    errors = schema_errors(kustomize_build(kustomize, broken))
    assert len(errors) == len(K8S_VERSIONS), errors
    assert all(expected in e for e in errors), errors


def test_config_map_is_config_example_toml(docs: list[dict[str, Any]]) -> None:
    example = (REPO / "config.example.toml").read_text()
    assert (K8S_DIR / "config.toml").read_text() == example, (
        "deploy/k8s/config.toml is a copy of config.example.toml; refresh it with "
        "`cp config.example.toml deploy/k8s/config.toml`"
    )
    assert _one(docs, "ConfigMap")["data"] == {"config.toml": example}


def test_the_pod_configuration_loads_and_fits_the_manifests(
    docs: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    statefulset = _one(docs, "StatefulSet", "detector")
    pod = statefulset["spec"]["template"]["spec"]
    container = _container(statefulset)
    env = container["env"]
    by_name = {e["name"]: e for e in env}
    for key in ("DETECTOR_KAFKA__GROUP_INSTANCE_ID", "DETECTOR_RUN__INSTANCE"):
        assert by_name[key]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}

    # The settings the pod gets: the ConfigMap's file under the container's environment.
    config = tmp_path / "config.toml"
    config.write_text(_one(docs, "ConfigMap")["data"]["config.toml"])
    for name in [k for k in os.environ if k.startswith("DETECTOR_")]:
        monkeypatch.delenv(name)
    for e in env:
        monkeypatch.setenv(e["name"], e.get("value", "detector-0"))
    assert container["args"][:3] == ["run", "--config", "/etc/detector/config.toml"]
    settings = load_settings(config)
    assert settings.kafka.group_instance_id == "detector-0"
    assert (settings.run.source, settings.run.sink) == ("kafka", "kafka")

    port = int(settings.http.listen.rpartition(":")[2])
    assert settings.http.listen == "0.0.0.0:9464"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": port}
    probes = {k: container[k]["httpGet"]["path"] for k in container if k.endswith("Probe")}
    assert probes == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    assert all(container[k]["httpGet"]["port"] == "metrics" for k in probes)

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["state"] == settings.state.dir
    assert [t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]] == ["state"]
    assert by_name["NUMBA_CACHE_DIR"]["value"].startswith(mounts["cache"])
    assert int(by_name["NUMBA_NUM_THREADS"]["value"]) == int(
        container["resources"]["limits"]["cpu"]
    )
    assert mounts["config"] == "/etc/detector"
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == _one(docs, "ConfigMap")["metadata"]["name"]

    # The final checkpoint must finish before the kubelet's SIGKILL.
    assert pod["terminationGracePeriodSeconds"] >= settings.state.grace_s + 15


def test_resources_security_and_services(docs: list[dict[str, Any]]) -> None:
    statefulset = _one(docs, "StatefulSet", "detector")
    pod = statefulset["spec"]["template"]
    for workload in (statefulset, _one(docs, "CronJob")):
        container = _container(workload)
        resources = container["resources"]
        assert resources["requests"] == resources["limits"]  # Guaranteed QoS
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] != 0

    labels = pod["metadata"]["labels"]
    selector = statefulset["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    headless = _one(docs, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    metrics = _one(docs, "Service", "detector-metrics")
    for service in (headless, metrics):
        assert service["spec"]["selector"].items() <= labels.items()
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["metrics"]
    pdb = _one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_training_cronjob(docs: list[dict[str, Any]]) -> None:
    cronjob = _one(docs, "CronJob", "detector-train")
    container = _container(cronjob)
    args = build_parser().parse_args(container["args"])  # the CLI takes its command line
    assert args.command == "train"
    # The input topic (kafka.input_topic), a recent range, onto the models topic.
    assert args.from_topic == "" and args.last is not None and args.publish
    assert str(args.out).startswith("/models/")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["name"] == "models"
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    # The pods' Kafka settings and credentials.
    assert container["envFrom"] == _container(_one(docs, "StatefulSet", "detector"))["envFrom"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
