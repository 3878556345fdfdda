"""Kubernetes deployment artefacts, checked offline (no cluster, no helm binary here).

* Every stage's Job is built by dagster-k8s itself (asset op_tags -> get_user_defined_k8s_config ->
  K8sContainerContext merge over the Helm runK8sConfig, as the k8s_job_executor does ->
  construct_dagster_k8s_job) and validated against the Kubernetes 1.31 OpenAPI schema in strict mode.
* Misspelt keys fail: in a stage config (dagster-k8s model check), in a manifest (strict schema), in
  values.yaml (key allowlist mirroring the chart's values schema), in dagster.yaml (Dagster config schema).
* values.yaml / dagster.yaml / docs agree on image, module, secret names and run-queue limits.
"""

# No `from __future__ import annotations`: Dagster compares the `context` annotation by identity.
import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_k8s_job_name,
    get_user_defined_k8s_config,
)

from ad_common.stages import (
    GPU_RESOURCE,
    K8S_CONFIG_TAG,
    MAX_RUNTIME_TAG,
    MLFLOW_SECRET,
    POOL_LABEL,
    QAIHUB_SECRET,
    STAGE_SPECS,
    STAGE_TAG,
    STAGES,
    k8s_config,
    k8s_op_tags,
    stage_run_tags,
    stage_spec,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
VALUES_YAML = REPO_ROOT / "deploy" / "helm" / "values.yaml"
DAGSTER_YAML = REPO_ROOT / "deploy" / "dagster.yaml"
DEPLOY_DOC = REPO_ROOT / "docs" / "deploy.md"
K8S_VERSION = "1.31"


# --- helpers -----------------------------------------------------------------------------------------------


def _values() -> dict[str, Any]:
    return yaml.safe_load(VALUES_YAML.read_text())


def _user_deployment(values: dict[str, Any]) -> dict[str, Any]:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return deployment


# The chart renders runLauncher.config.k8sRunLauncher.runK8sConfig into the instance's `run_k8s_config`
# with these key translations (helm/dagster/templates/helpers/instance/_run-launcher.tpl).
_HELM_RUN_K8S_KEYS = {
    "containerConfig": "container_config",
    "podSpecConfig": "pod_spec_config",
    "podTemplateSpecMetadata": "pod_template_spec_metadata",
    "jobSpecConfig": "job_spec_config",
    "jobMetadata": "job_metadata",
}


def _helm_run_k8s_config(values: dict[str, Any]) -> UserDefinedDagsterK8sConfig:
    helm = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    unknown = set(helm) - set(_HELM_RUN_K8S_KEYS)
    assert not unknown, f"runK8sConfig keys the chart does not render: {unknown}"
    return UserDefinedDagsterK8sConfig.from_dict({_HELM_RUN_K8S_KEYS[k]: v for k, v in helm.items()})


def _job_config(values: dict[str, Any]) -> DagsterK8sJobConfig:
    """What the Helm-rendered K8sRunLauncher + user deployment hand to construct_dagster_k8s_job."""
    deployment = _user_deployment(values)
    image = deployment["image"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    return DagsterK8sJobConfig(
        job_image=f"{image['repository']}:{image['tag']}",
        dagster_home="/opt/dagster/dagster_home",
        image_pull_policy=launcher["imagePullPolicy"],
        instance_config_map="ad-platform-dagster-instance",
        postgres_password_secret=values["global"]["postgresqlSecretName"],
        env_secrets=sorted({s["name"] for s in launcher["envSecrets"] + deployment["envSecrets"]}),
        service_account_name="ad-platform-dagster",
    )


def _manifest(user_config: UserDefinedDagsterK8sConfig, values: dict[str, Any], step: str) -> dict[str, Any]:
    job = construct_dagster_k8s_job(
        job_config=_job_config(values),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{get_k8s_job_name('0123-run', step)}",
        user_defined_k8s_config=user_config,
        component="step_worker",
        labels={"dagster/op": step, "dagster/run-id": "0123-run"},
    )
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    return manifest


def _step_config_for(stage: str, values: dict[str, Any]) -> UserDefinedDagsterK8sConfig:
    """As dagster_k8s.executor.K8sStepHandler._get_container_context: run-launcher base, then op tags."""

    @dg.asset(name=f"{stage}_probe", op_tags=k8s_op_tags(stage))
    def probe() -> None: ...

    # The op's tags as Dagster stores them (dict value JSON-encoded by normalize_tags).
    step_tags = probe.op.tags
    assert isinstance(step_tags[K8S_CONFIG_TAG], str)
    base = K8sContainerContext(run_k8s_config=_helm_run_k8s_config(values))
    merged = base.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step_tags)))
    return merged.run_k8s_config


def _pod(manifest: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod_spec = manifest["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    return pod_spec, container


# --- stage catalogue -----------------------------------------------------------------------------------------


def test_stage_catalogue() -> None:
    assert STAGES == ("ingest", "decode", "sync", "curate", "train", "compile", "catalog")
    assert set(STAGE_SPECS) == set(STAGES)
    assert {s for s in STAGES if stage_spec(s).pool == "gpu"} == {"train", "compile"}
    decode = stage_spec("decode")
    assert (decode.cpu_request, decode.memory_request, decode.memory_limit) == ("2", "2Gi", "4Gi")
    with pytest.raises(KeyError, match="known stages: ingest, decode, sync, curate, train, compile, catalog"):
        k8s_op_tags("decoder")
    # Fresh dicts: a caller mutating one must not change the next call's result.
    k8s_config("train")["pod_spec_config"]["nodeSelector"][POOL_LABEL] = "cpu"
    assert k8s_config("train")["pod_spec_config"]["nodeSelector"][POOL_LABEL] == "gpu"


# --- step Jobs, one per stage ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_step_job_is_valid_k8s_and_carries_stage_pod(stage: str) -> None:
    values = _values()
    spec = stage_spec(stage)
    manifest = _manifest(_step_config_for(stage, values), values, step=f"{stage}_probe")
    pod_spec, container = _pod(manifest)

    requests = {"cpu": spec.cpu_request, "memory": spec.memory_request}
    limits = {"cpu": spec.cpu_limit, "memory": spec.memory_limit}
    requests["ephemeral-storage"] = spec.ephemeral_storage_request
    limits["ephemeral-storage"] = spec.ephemeral_storage_limit
    if spec.gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(spec.gpus)
    # Stage resources replace the run-worker defaults from values.yaml completely (no leftover keys).
    assert container["resources"] == {"requests": requests, "limits": limits}

    # The stage's pool wins over the CPU-pool default of the run worker (same label key, deep merge).
    assert pod_spec["nodeSelector"] == {POOL_LABEL: spec.pool}
    tolerations = pod_spec.get("tolerations", [])
    if spec.pool == "gpu":
        assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in tolerations
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        (dshm,) = [v for v in pod_spec["volumes"] if v["name"] == "dshm"]
        assert dshm["emptyDir"] == {"medium": "Memory", "sizeLimit": spec.shm_size}
    else:
        assert not tolerations
        assert GPU_RESOURCE not in container["resources"]["limits"]

    labels = manifest["spec"]["template"]["metadata"]["labels"]
    assert labels[STAGE_TAG] == stage
    assert labels[POOL_LABEL] == spec.pool
    assert labels["ad-platform/component"] == "run-worker"  # merged from values.yaml, not replaced
    assert manifest["spec"]["activeDeadlineSeconds"] > spec.max_runtime_s
    assert manifest["spec"]["backoffLimit"] == 0

    # Secrets from values.yaml reach the pod: AWS via envFrom, Postgres password via secretKeyRef.
    assert {"secretRef": {"name": "ad-platform-aws"}} in container["envFrom"]
    # The stage's own secrets (MLflow URI, AI Hub token) are added to, not replacing, the values' ones.
    assert all({"secretRef": {"name": name}} in container["envFrom"] for name in spec.env_secrets)
    stage_secrets = {"train": {MLFLOW_SECRET}, "compile": {MLFLOW_SECRET, QAIHUB_SECRET}}
    assert set(spec.env_secrets) == stage_secrets.get(stage, set())
    (pg_password,) = [e for e in container["env"] if e["name"] == "DAGSTER_PG_PASSWORD"]
    assert pg_password["valueFrom"]["secretKeyRef"]["name"] == values["global"]["postgresqlSecretName"]


def test_run_worker_job_from_values_is_valid_k8s() -> None:
    values = _values()
    manifest = _manifest(_helm_run_k8s_config(values), values, step="run")
    pod_spec, container = _pod(manifest)
    assert pod_spec["nodeSelector"] == {POOL_LABEL: "cpu"}
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    # Above the longest stage, so the Kubernetes deadline never pre-empts Dagster's own timeout.
    assert manifest["spec"]["activeDeadlineSeconds"] > max(s.max_runtime_s for s in STAGE_SPECS.values())


@pytest.mark.parametrize("stage", ["decode", "train"])
def test_stage_run_tags_size_an_in_process_run_pod(stage: str) -> None:
    tags = stage_run_tags(stage, with_pod_config=True)
    assert tags[STAGE_TAG] == stage
    assert int(tags[MAX_RUNTIME_TAG]) == stage_spec(stage).max_runtime_s
    assert all(isinstance(v, str) for v in tags.values())  # Dagster run tags are strings
    manifest = _manifest(get_user_defined_k8s_config(tags), _values(), step="run")
    pod_spec, _ = _pod(manifest)
    assert pod_spec["nodeSelector"] == {POOL_LABEL: stage_spec(stage).pool}
    assert K8S_CONFIG_TAG not in stage_run_tags(stage)


# --- misspelt keys fail --------------------------------------------------------------------------------------


def test_misspelt_field_inside_stage_config_fails() -> None:
    bad = copy.deepcopy(k8s_config("train"))
    bad["pod_spec_config"]["nodeSelecter"] = bad["pod_spec_config"].pop("nodeSelector")
    with pytest.raises(Exception, match=r"Unexpected keys in model class V1PodSpec: \{'nodeSelecter'\}"):
        get_user_defined_k8s_config({K8S_CONFIG_TAG: json.dumps(bad)})

    bad = copy.deepcopy(k8s_config("decode"))
    bad["container_config"]["resources"]["limit"] = bad["container_config"]["resources"].pop("limits")
    with pytest.raises(Exception, match="V1ResourceRequirements"):
        get_user_defined_k8s_config({K8S_CONFIG_TAG: json.dumps(bad)})


def test_misspelt_top_level_key_fails() -> None:
    bad = copy.deepcopy(k8s_config("decode"))
    bad["pod_spec_confg"] = bad.pop("pod_spec_config")
    with pytest.raises(DagsterInvalidConfigError):
        get_user_defined_k8s_config({K8S_CONFIG_TAG: json.dumps(bad)})


def test_strict_schema_rejects_misspelt_manifest_key() -> None:
    # Guards the guard: a key that bypasses dagster-k8s (e.g. hand-edited manifest) fails strict validation.
    values = _values()
    manifest = _manifest(_step_config_for("train", values), values, step="train_probe")
    bad = copy.deepcopy(manifest)
    bad["spec"]["template"]["spec"]["nodeSelektor"] = bad["spec"]["template"]["spec"].pop("nodeSelector")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# --- values.yaml ---------------------------------------------------------------------------------------------

# Keys accepted by the dagster/dagster chart for the sections values.yaml sets, transcribed from the
# chart's pydantic values schema (dagster-io/dagster helm/dagster/schema/schema/charts/**, models with
# extra="forbid") and, for runMonitoring (typed dict[str, Any]), the keys its instance template renders.
# `None` = free-form (Kubernetes objects, maps); a dict = nested keys; a 1-element list = list of those.


def _keys(*names: str) -> dict[str, None]:
    return dict.fromkeys(names)


_SVC = {"annotations": None, "type": None, "port": None}
_POD = _keys(
    "env",
    "envConfigMaps",
    "envSecrets",
    "deploymentLabels",
    "labels",
    "nodeSelector",
    "affinity",
    "tolerations",
    "podSecurityContext",
    "securityContext",
    "resources",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "annotations",
    "schedulerName",
    "volumeMounts",
    "volumes",
)
_IMAGE = {"repository": None, "tag": None, "pullPolicy": None}
CHART_KEYS: dict[str, Any] = {
    "global": _keys(
        "postgresqlSecretName",
        "postgresqlSecretUsernameKey",
        "dagsterHome",
        "serviceAccountName",
        "celeryConfigSecretName",
        "dagsterInstanceConfigMap",
    ),
    "generatePostgresqlPasswordSecret": None,
    "generateCeleryConfigSecret": None,
    "postgresql": {
        "postgresqlScheme": None,
        "image": _IMAGE,
        "enabled": None,
        "postgresqlHost": None,
        "postgresqlUsername": None,
        "postgresqlPassword": None,
        "postgresqlDatabase": None,
        "postgresqlParams": None,
        "service": {"port": None},
    },
    "dagsterWebserver": {
        **_POD,
        "dbStatementTimeout": None,
        "dbPoolRecycle": None,
        "logLevel": None,
        "pathPrefix": None,
        "replicaCount": None,
        "image": _IMAGE,
        "nameOverride": None,
        "service": _SVC,
        "workspace": None,
        "enableReadOnly": None,
    },
    "dagster-user-deployments": {
        "enabled": None,
        "enableSubchart": None,
        "imagePullSecrets": None,
        "deployments": [
            {
                **_POD,
                "name": None,
                "image": _IMAGE,
                "port": None,
                "dagsterApiGrpcArgs": None,
                "codeServerArgs": None,
                "includeConfigInLaunchedRuns": {"enabled": None},
                "deploymentNamespace": None,
            }
        ],
    },
    "runLauncher": {
        "type": None,
        "config": {
            "k8sRunLauncher": {
                "image": _IMAGE,
                "imagePullPolicy": None,
                "jobNamespace": None,
                "loadInclusterConfig": None,
                "kubeconfigFile": None,
                "envConfigMaps": None,
                "envSecrets": None,
                "envVars": None,
                "volumeMounts": None,
                "volumes": None,
                "labels": None,
                "failPodOnRunFailure": None,
                "resources": None,
                "schedulerName": None,
                "securityContext": None,
                "runK8sConfig": {k: None for k in _HELM_RUN_K8S_KEYS},
            }
        },
    },
    "dagsterDaemon": {
        **_POD,
        "enabled": None,
        "image": _IMAGE,
        "heartbeatTolerance": None,
        "runCoordinator": {
            "enabled": None,
            "type": None,
            "config": {
                "queuedRunCoordinator": {
                    "maxConcurrentRuns": None,
                    "tagConcurrencyLimits": [{"key": None, "value": None, "limit": None}],
                    "dequeueIntervalSeconds": None,
                    "dequeueNumWorkers": None,
                    "dequeueUseThreads": None,
                    "blockOpConcurrencyLimitedRuns": None,
                }
            },
        },
        "runMonitoring": {
            "enabled": None,
            "startTimeoutSeconds": None,
            "pollIntervalSeconds": None,
            "maxResumeRunAttempts": None,
        },
        "runRetries": None,
        "sensors": None,
        "schedules": None,
    },
    "computeLogManager": {
        "type": None,
        "config": {
            "s3ComputeLogManager": _keys(
                "localDir",
                "prefix",
                "useSsl",
                "verify",
                "verifyCertPath",
                "endpointUrl",
                "skipEmptyFiles",
                "uploadInterval",
                "uploadExtraArgs",
                "showUrlOnly",
                "region",
                "bucket",
            )
        },
    },
}


def _unknown_keys(value: Any, schema: Any, path: str = "") -> list[str]:
    if schema is None:
        return []
    if isinstance(schema, list):
        assert isinstance(value, list), f"{path} must be a list"
        return [bad for i, item in enumerate(value) for bad in _unknown_keys(item, schema[0], f"{path}[{i}]")]
    assert isinstance(value, dict), f"{path} must be a mapping"
    bad = [f"{path}.{k}".lstrip(".") for k in value if k not in schema]
    return bad + [b for k, v in value.items() if k in schema for b in _unknown_keys(v, schema[k], f"{path}.{k}")]


def test_values_yaml_uses_only_chart_keys() -> None:
    assert _unknown_keys(_values(), CHART_KEYS) == []


def test_misspelt_values_key_is_reported() -> None:
    bad = _values()
    queue = bad["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    queue["maxConcurentRuns"] = queue.pop("maxConcurrentRuns")
    run_k8s = bad["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    run_k8s["podSpecConfg"] = run_k8s.pop("podSpecConfig")
    assert _unknown_keys(bad, CHART_KEYS) == [
        "runLauncher.config.k8sRunLauncher.runK8sConfig.podSpecConfg",
        "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.maxConcurentRuns",
    ]
    with pytest.raises(AssertionError, match="podSpecConfg"):
        _helm_run_k8s_config(bad)


def test_values_yaml_structure_and_consistency() -> None:
    values = _values()
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"

    deployment = _user_deployment(values)
    assert deployment["image"]["repository"] and deployment["image"]["tag"]
    assert isinstance(deployment["image"]["tag"], str)  # a YAML float like 1.10 would be mangled
    assert deployment["dagsterApiGrpcArgs"] == ["-m", pyproject["tool"]["dagster"]["module_name"]]
    assert isinstance(deployment["port"], int)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", deployment["name"])  # DNS-1123 label
    assert {"AD_LANDING_URL", "AD_LAKE_URL"} <= set(deployment["env"])
    assert all(str(deployment["env"][k]).startswith("s3://") for k in ("AD_LANDING_URL", "AD_LAKE_URL"))

    # Queue limits target real stages via the tag key every run carries, and match deploy/dagster.yaml.
    queue = values["dagsterDaemon"]["runCoordinator"]
    assert queue["enabled"] is True
    assert queue["type"] == "QueuedRunCoordinator"
    limits = queue["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert {lim["key"] for lim in limits} == {STAGE_TAG}
    assert {lim["value"] for lim in limits} <= set(STAGES)
    run_queue = yaml.safe_load(DAGSTER_YAML.read_text())["run_queue"]
    assert run_queue["tag_concurrency_limits"] == limits
    assert run_queue["max_concurrent_runs"] == queue["config"]["queuedRunCoordinator"]["maxConcurrentRuns"]
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is True


def test_secret_names_match_the_docs() -> None:
    values = _values()
    doc = DEPLOY_DOC.read_text()
    created = set(re.findall(r"kubectl\s+(?:-n\s+\S+\s+)?create\s+secret\s+generic\s+([a-z0-9-]+)", doc))
    referenced = {values["global"]["postgresqlSecretName"]}
    for section in (
        values["dagsterWebserver"],
        values["dagsterDaemon"],
        values["runLauncher"]["config"]["k8sRunLauncher"],
        _user_deployment(values),
    ):
        referenced |= {s["name"] for s in section.get("envSecrets", [])}
    referenced |= {name for spec in STAGE_SPECS.values() for name in spec.env_secrets}
    assert referenced == created
    # dagster-k8s reads the Postgres password from this key of that secret (DAGSTER_PG_PASSWORD_SECRET_KEY).
    assert "postgresql-password" in doc


# --- deploy/dagster.yaml (schema only; tests/platform/test_postgres_instance.py runs it against a real server) -------


@pytest.fixture
def pg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "DAGSTER_PG_HOST": "db.invalid",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_USERNAME": "dagster",
        "DAGSTER_PG_PASSWORD": "x",
        "DAGSTER_PG_DB": "dagster",
    }.items():
        monkeypatch.setenv(key, value)


@pytest.mark.usefixtures("pg_env")
def test_dagster_yaml_validates_against_instance_schema() -> None:
    config, custom_class = dagster_instance_config(str(DAGSTER_YAML.parent), DAGSTER_YAML.name)
    assert custom_class is None
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_queue"]["max_concurrent_runs"] == 40


@pytest.mark.usefixtures("pg_env")
def test_misspelt_dagster_yaml_key_fails(tmp_path: Path) -> None:
    text = DAGSTER_YAML.read_text().replace("max_concurrent_runs:", "max_concurent_runs:")
    (tmp_path / "dagster.yaml").write_text(text)
    with pytest.raises(DagsterInvalidConfigError, match="max_concurent_runs"):
        dagster_instance_config(str(tmp_path))
