"""Terraform (deploy/terraform) and the lock files, checked offline: HCL parsed with python-hcl2, no providers.

`terraform init` cannot download providers here, so neither `validate` nor `plan` runs. What these tests do
instead: cross-check the HCL against the rest of deploy/ and the stage table (buckets, secrets and service
accounts the Helm values name are created; GPU node group taint/labels equal the GPU stages'
tolerations/nodeSelector; RDS major = the PostgreSQL the tests run against; each IRSA policy names only its
own buckets and no `*` resource; every bucket is encrypted), and show each check fails on a planted error.
checkov (own venv `.venv-deploy`, `make checkov-venv`) scans the same HCL when that venv exists; otherwise its
test skips with the reason.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

import hcl2
import pytest
import yaml
from packaging.requirements import Requirement

from ad_common.stages import GPU_RESOURCE, MLFLOW_SECRET, POOL_LABEL, QAIHUB_SECRET, STAGE_SPECS, k8s_config
from ad_resources.tracking import MlflowTracking, tracking_from_env

REPO_ROOT = Path(__file__).resolve().parents[2]
TF = REPO_ROOT / "deploy" / "terraform"
ENVS = ("dev", "prod")
VALUES_YAML = REPO_ROOT / "deploy" / "helm" / "values.yaml"
DEPLOY_DOC = REPO_ROOT / "docs" / "deploy.md"

# --- HCL helpers ----------------------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """python-hcl2 keeps string quotes and adds __is_block__/__comments__ markers: drop both."""
    if isinstance(value, str):
        return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items() if not str(k).startswith("__")}
    return value


@cache
def _module(path: str) -> dict[str, list[Any]]:
    """All blocks of a module directory, by block type (resource, data, variable, output, locals, module)."""
    merged: dict[str, list[Any]] = {}
    for tf in sorted((TF / path).glob("*.tf")):
        for kind, blocks in _clean(hcl2.loads(tf.read_text())).items():
            merged.setdefault(kind, []).extend(blocks)
    return merged


def _blocks(mod: dict[str, list[Any]], kind: str, type_: str | None = None) -> dict[str, Any]:
    """`resource "type" "name"` -> {name: body} (or {type.name: body} when type_ is None)."""
    out: dict[str, Any] = {}
    for block in mod.get(kind, []):
        for t, named in block.items():
            for name, body in named.items():
                if type_ is None:
                    out[f"{t}.{name}"] = body
                elif t == type_:
                    out[name] = body
    return out


def _locals(mod: dict[str, list[Any]]) -> dict[str, Any]:
    return {k: v for block in mod.get("locals", []) for k, v in block.items()}


def _var_defaults(mod: dict[str, list[Any]]) -> dict[str, Any]:
    return {name: body.get("default") for block in mod.get("variable", []) for name, body in block.items()}


def _interpolate(template: str, variables: dict[str, Any]) -> str:
    """``${var.x}`` and ``${urlencode(var.x)}`` resolved from ``variables``."""

    def sub(m: re.Match[str]) -> str:
        func, name = m.group(1), m.group(2)
        assert name in variables, f"unresolved var.{name} in {template!r}"
        return quote(str(variables[name]), safe="") if func else str(variables[name])

    out = re.sub(r"\$\{(?:(urlencode)\()?var\.(\w+)\)?\}", sub, template)
    assert "${" not in out, f"cannot resolve {template!r} statically"
    return out


def _tfvars(env: str) -> dict[str, Any]:
    return _clean(hcl2.loads((TF / "envs" / env / "terraform.tfvars").read_text()))


def _module_calls(path: str) -> dict[str, Any]:
    return {name: body for block in _module(path).get("module", []) for name, body in block.items()}


def _env_name(env: str) -> str:
    """The environment's name prefix, followed through envs/<env> -> modules/platform -> modules/storage."""
    assert _module_calls(f"envs/{env}")["platform"]["name"] == "${var.name}"
    assert _module_calls("modules/platform")["storage"]["name"] == "${var.name}"
    return str(_tfvars(env)["name"])


def created_buckets(env: str, storage: dict[str, list[Any]] | None = None) -> dict[str, str]:
    """Bucket role -> name that `terraform apply` of ``env`` creates (modules/storage locals.buckets)."""
    storage = storage or _module("modules/storage")
    names = {k: _interpolate(v, {"name": _env_name(env)}) for k, v in _locals(storage)["buckets"].items()}
    # The for_each bucket resource creates exactly that map.
    assert _blocks(storage, "resource", "aws_s3_bucket")["this"]["for_each"] == "${local.buckets}"
    return names


def simulated_outputs(env: str) -> dict[str, Any]:
    """What `terraform output -json` of ``env`` would print, resolved from the HCL (ARNs/hosts are stand-ins)."""
    buckets = created_buckets(env)
    storage_vars = _var_defaults(_module("modules/storage"))
    accounts = _identity_service_accounts()
    name = _env_name(env)
    plain = {
        "aws_region": _tfvars(env)["region"],
        "postgresql_host": f"{name}.abc123.{_tfvars(env)['region']}.rds.amazonaws.com",
        "postgresql_username": _var_defaults(_module("modules/metadata"))["username"],
        "postgresql_database": _var_defaults(_module("modules/metadata"))["databases"][0],
        "landing_bucket": buckets["landing"],
        "landing_prefix": storage_vars["landing_prefix"],
        "lake_bucket": buckets["lake"],
        "lake_prefix": storage_vars["lake_prefix"],
        "mlflow_artifact_bucket": buckets["mlflow_artifacts"],
        "mlflow_artifact_prefix": storage_vars["mlflow_prefix"],
        "namespace": _var_defaults(_module("modules/platform"))["namespace"],
        "compute_log_bucket": buckets["compute_logs"],
        "compute_log_prefix": storage_vars["compute_log_prefix"],
        "image_repository": f"123456789012.dkr.ecr.{_tfvars(env)['region']}.amazonaws.com/{name}/user-code",
        "service_accounts": accounts,
        "irsa_role_arns": {k: f"arn:aws:iam::123456789012:role/{name}-{k}" for k in accounts},
    }
    return {k: {"value": v, "type": "string", "sensitive": False} for k, v in plain.items()}


def _identity_service_accounts() -> dict[str, str]:
    identity = _module("modules/identity")
    defaults = _var_defaults(identity)
    return {
        k: defaults[v.removeprefix("${var.").removesuffix("}")]
        for k, v in _locals(identity)["service_accounts"].items()
    }


@cache
def _outputs_to_values() -> ModuleType:
    spec = importlib.util.spec_from_file_location("outputs_to_values", TF / "outputs_to_values.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _values() -> dict[str, Any]:
    return yaml.safe_load(VALUES_YAML.read_text())


def _helm_values(env: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """values.yaml with the env's override from the outputs script on top, merged as Helm merges them."""
    base = base if base is not None else _values()
    tool = _outputs_to_values()
    return tool.merge(base, tool.values_override(simulated_outputs(env), "0.1.0", base))


# --- the cross-checks (pure functions: each returns the problems it finds) -----------------------------------


def buckets_named_by_values(values: dict[str, Any]) -> set[str]:
    """Every bucket the Helm values name: s3:// URLs anywhere plus the compute log manager's bucket."""
    found = set(re.findall(r"s3://([a-z0-9.-]+)", json.dumps(values)))
    found.add(values["computeLogManager"]["config"]["s3ComputeLogManager"]["bucket"])
    return found


def missing_buckets(values: dict[str, Any], env: str) -> list[str]:
    return sorted(buckets_named_by_values(values) - set(created_buckets(env).values()))


def gpu_taints(eks: dict[str, list[Any]]) -> list[dict[str, str]]:
    """The GPU node group's taints in Kubernetes form (the AWS API spells NoSchedule as NO_SCHEDULE)."""
    effects = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": "PreferNoSchedule"}
    taints = _blocks(eks, "resource", "aws_eks_node_group")["gpu"].get("taint", [])
    return [{"key": t["key"], "value": t.get("value"), "effect": effects[t["effect"]]} for t in taints]


def node_group_labels(eks: dict[str, list[Any]], group: str) -> dict[str, str]:
    labels = _blocks(eks, "resource", "aws_eks_node_group")[group]["labels"]
    pool_label = _var_defaults(eks)["pool_label"]
    return {(pool_label if k in ("${(var.pool_label)}", "${var.pool_label}") else k): v for k, v in labels.items()}


def _tolerates(toleration: dict[str, str], taint: dict[str, str]) -> bool:
    if toleration.get("key") != taint["key"] or toleration.get("effect", taint["effect"]) != taint["effect"]:
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return toleration.get("value") == taint["value"]


def pool_mismatches(stage_configs: dict[str, dict[str, Any]], eks: dict[str, list[Any]]) -> list[str]:
    """Stages that would not schedule on (or would leak onto) the node groups Terraform creates."""
    problems: list[str] = []
    taints = gpu_taints(eks)
    for stage, config in stage_configs.items():
        pod = config["pod_spec_config"]
        tolerations = pod.get("tolerations", [])
        group = pod["nodeSelector"][POOL_LABEL]
        labels = node_group_labels(eks, group)
        if not set(pod["nodeSelector"].items()) <= set(labels.items()):
            problems.append(f"{stage}: nodeSelector {pod['nodeSelector']} not among {group} node labels {labels}")
        if group == "gpu":
            untolerated = [t for t in taints if not any(_tolerates(tol, t) for tol in tolerations)]
            if untolerated:
                problems.append(f"{stage}: tolerations {tolerations} do not tolerate GPU taint {untolerated}")
        elif any(_tolerates(tol, t) for tol in tolerations for t in taints):
            problems.append(f"{stage}: CPU stage tolerates the GPU taint")
    return problems


_BUCKET_COMPANIONS = (
    "aws_s3_bucket_server_side_encryption_configuration",
    "aws_s3_bucket_versioning",
    "aws_s3_bucket_public_access_block",
    "aws_s3_bucket_policy",
    "aws_s3_bucket_lifecycle_configuration",
)


def unprotected_buckets(storage: dict[str, list[Any]]) -> list[str]:
    """`bucket.<name>: missing <companion>` for every bucket without encryption, versioning, public access
    block, (TLS-only) policy or lifecycle rule. For the for_each bucket each of its keys must be covered:
    by a companion with the same for_each, or one naming ``aws_s3_bucket.this["<key>"]``."""
    problems = []
    keys = list(_locals(storage).get("buckets", {}))
    for name, body in _blocks(storage, "resource", "aws_s3_bucket").items():
        per_key = body.get("for_each") == "${local.buckets}"
        for companion in _BUCKET_COMPANIONS:
            refs = set()
            for comp in _blocks(storage, "resource", companion).values():
                bucket = str(comp.get("bucket", ""))
                if (
                    per_key
                    and comp.get("for_each") == "${local.buckets}"
                    and f"aws_s3_bucket.{name}[each.key]" in bucket
                ):
                    refs |= set(keys)
                elif m := re.fullmatch(rf'\$\{{aws_s3_bucket\.{name}(?:\["(\w+)"\])?\.id\}}', bucket):
                    refs.add(m.group(1) or "")
            wanted = set(keys) if per_key else {""}
            problems += [f"bucket.{name}{f'[{k}]' if k else ''}: missing {companion}" for k in sorted(wanted - refs)]
    return problems


def tls_only(storage: dict[str, list[Any]]) -> list[str]:
    """Bucket policies that do not deny aws:SecureTransport=false."""
    problems = []
    for name, doc in _blocks(storage, "data", "aws_iam_policy_document").items():
        denies = [
            s
            for s in doc.get("statement", [])
            if s.get("effect") == "Deny"
            and any(c["variable"] == "aws:SecureTransport" and c["values"] == ["false"] for c in s.get("condition", []))
        ]
        if not denies:
            problems.append(name)
    return problems


# Least privilege, written down once: the buckets each IRSA role may name (docs/deploy.md has the same table).
ROLE_BUCKETS = {
    "user_code": {"landing", "lake", "compute_logs"},
    "dagster": {"compute_logs"},
    "train": {"lake", "mlflow_artifacts", "compute_logs"},
    "compile": {"lake", "mlflow_artifacts", "compute_logs"},
}


def policy_problems(identity: dict[str, list[Any]]) -> list[str]:
    """`*` resources, resources not derived from a known bucket or the KMS key, and buckets a role should not name."""
    local_bucket = {
        k: v.removeprefix('${var.bucket_arns["').removesuffix('"]}')
        for k, v in _locals(identity).items()
        if isinstance(v, str) and v.startswith("${var.bucket_arns[")
    }
    problems = []
    docs = _blocks(identity, "data", "aws_iam_policy_document")
    for role, allowed in ROLE_BUCKETS.items():
        named: set[str] = set()
        for statement in docs[role]["statement"]:
            for resource in statement["resources"]:
                if "*" in resource.split("/")[0] or resource.strip() in ("*", "${*}"):
                    problems.append(f"{role}: `*` resource {resource!r}")
                    continue
                m = re.match(r"\$\{local\.(\w+)\}", resource)
                if m and m.group(1) in local_bucket:
                    named.add(local_bucket[m.group(1)])
                elif resource != "${var.kms_key_arn}":
                    problems.append(f"{role}: resource {resource!r} is neither a platform bucket nor the KMS key")
        problems += [f"{role}: names bucket {b!r} it does not need" for b in sorted(named - allowed)]
    return problems


def uncreated_secrets(values: dict[str, Any], addons: dict[str, list[Any]]) -> list[str]:
    """Secrets the pods read (Helm values: the Postgres secret, every envSecrets; the stage table's env_secrets)
    that modules/k8s-addons does not create."""
    defaults = _var_defaults(addons)
    created = {
        defaults[body["metadata"][0]["name"].removeprefix("${var.").removesuffix("}")]
        for body in _blocks(addons, "resource", "kubernetes_secret_v1").values()
    }
    referenced = {values["global"]["postgresqlSecretName"]}
    for section in (
        values["dagsterWebserver"],
        values["dagsterDaemon"],
        values["runLauncher"]["config"]["k8sRunLauncher"],
        values["dagster-user-deployments"]["deployments"][0],
    ):
        referenced |= {s["name"] for s in section.get("envSecrets", [])}
    referenced |= {name for spec in STAGE_SPECS.values() for name in spec.env_secrets}
    return sorted(referenced - created)


def train_image_problems(values: dict[str, Any]) -> list[str]:
    """The trainer rank pods must run the code location's own image (AD_TRAIN_IMAGE = image repository:tag)."""
    deployment = values["dagster-user-deployments"]["deployments"][0]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    env = deployment["env"]
    problems = (
        [] if env.get("AD_TRAIN_IMAGE") == image else [f"AD_TRAIN_IMAGE {env.get('AD_TRAIN_IMAGE')!r} != {image!r}"]
    )
    if env.get("AD_TRAIN_LAUNCHER") != "kubernetes":
        problems.append(f"AD_TRAIN_LAUNCHER {env.get('AD_TRAIN_LAUNCHER')!r} != 'kubernetes'")
    return problems


def deployed_tracking_uri(env: str, addons: dict[str, list[Any]] | None = None, **server: Any) -> str:
    """AD_MLFLOW_TRACKING_URI as the ad-platform-mlflow secret Terraform writes holds it, followed from
    modules/platform into modules/k8s-addons. ``server`` (db_host, db_port, db_password) replaces the stand-ins:
    the simulated RDS endpoint, 5432, "pw"."""
    addons = addons or _module("modules/k8s-addons")
    call = _module_calls("modules/platform")["k8s_addons"]
    metadata = _var_defaults(_module("modules/metadata"))
    assert call["db_host"] == "${module.metadata.address}" and call["db_port"] == "${module.metadata.port}"
    assert call["db_username"] == "${module.metadata.username}" and call["db_password"] == "${module.metadata.password}"
    assert call["mlflow_database"] == "${module.metadata.databases[1]}"
    (secret,) = [
        body
        for body in _blocks(addons, "resource", "kubernetes_secret_v1").values()
        if body["metadata"][0]["name"] == "${var.mlflow_secret_name}"
    ]
    variables = {
        "db_username": metadata["username"],
        "db_password": "pw",
        "db_host": simulated_outputs(env)["postgresql_host"]["value"],
        "db_port": 5432,
        "mlflow_database": metadata["databases"][1],
        **server,
    }
    return _interpolate(secret["data"]["AD_MLFLOW_TRACKING_URI"], variables)


def tracking_store_problems(tracking: MlflowTracking, env: str) -> list[str]:
    """The MLflow resource of a train/compile pod must use the RDS `mlflow` database through psycopg2 with TLS and
    the artifacts bucket Terraform creates."""
    uri = urlparse(tracking.tracking_uri)
    problems = []
    if uri.scheme != "postgresql+psycopg2":  # a bare postgresql:// needs psycopg 3 (SQLAlchemy >= 2.1)
        problems.append(f"tracking scheme {uri.scheme!r} is not postgresql+psycopg2")
    if uri.hostname != simulated_outputs(env)["postgresql_host"]["value"]:
        problems.append(f"tracking host {uri.hostname!r} is not the RDS endpoint")
    if uri.path != f"/{_var_defaults(_module('modules/metadata'))['databases'][1]}":
        problems.append(f"tracking database {uri.path!r} is not the MLflow database")
    if parse_qs(uri.query).get("sslmode") != ["require"]:
        problems.append("tracking URI does not require TLS (RDS forces it)")
    if tracking.registry_uri not in (None, tracking.tracking_uri):
        problems.append(f"registry {tracking.registry_uri!r} is not the tracking store")
    wanted = (
        f"s3://{created_buckets(env)['mlflow_artifacts']}/{_var_defaults(_module('modules/storage'))['mlflow_prefix']}"
    )
    if tracking.artifact_location != wanted:
        problems.append(f"artifacts {tracking.artifact_location!r} != {wanted!r}")
    return problems


def _api_permission(method: str) -> tuple[str, str, str]:
    """A kubernetes-client call -> (API group, resource, verb) of the RBAC rule it needs."""
    verbs = {"create": "create", "delete": "delete", "read": "get", "list": "list", "patch": "patch"}
    verb, _, rest = method.partition("_namespaced_")
    kind, _, sub = rest.partition("_")
    group = "batch" if kind == "job" else ""
    return group, f"{kind}s" + (f"/{sub}" if sub else ""), verbs[verb]


def launcher_permissions() -> set[tuple[str, str, str]]:
    """Every namespaced API call of the multi-pod training launcher and the Pipes log reader it uses."""
    from dagster_k8s.pipes import PipesK8sPodLogsMessageReader

    from ad_resources.training import K8sTrainingLauncher

    source = inspect.getsource(K8sTrainingLauncher) + inspect.getsource(PipesK8sPodLogsMessageReader.consume_pod_logs)
    calls = set(re.findall(r"\.((?:create|delete|read|list|patch)_namespaced_\w+)\(", source))
    return {_api_permission(c) for c in calls}


def role_permissions(addons: dict[str, list[Any]]) -> set[tuple[str, str, str]]:
    role = _blocks(addons, "resource", "kubernetes_role_v1")["train_launcher"]
    return {
        (group, resource, verb)
        for rule in role["rule"]
        for group in rule["api_groups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def rbac_problems(addons: dict[str, list[Any]]) -> list[str]:
    """The train stage's Role grants exactly what the launcher calls, and is bound to the train service account."""
    needed, granted = launcher_permissions(), role_permissions(addons)
    problems = [f"train launcher may not {v} {g or 'core'}/{r}" for g, r, v in sorted(needed - granted)]
    problems += [f"train launcher needs no {v} on {g or 'core'}/{r}" for g, r, v in sorted(granted - needed)]
    binding = _blocks(addons, "resource", "kubernetes_role_binding_v1")["train_launcher"]
    subject = binding["subject"][0]
    if subject["name"] != '${kubernetes_service_account_v1.gpu_stage["train"].metadata[0].name}':
        problems.append(f"train launcher Role bound to {subject['name']!r}, not the train service account")
    return problems


# --- tests: the real files pass ------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVS)
def test_every_bucket_the_helm_values_name_is_created(env: str) -> None:
    values = _helm_values(env)
    name = _env_name(env)
    assert buckets_named_by_values(values) == {
        f"{name}-landing",
        f"{name}-lake",
        f"{name}-mlflow-artifacts",
        f"{name}-dagster-logs",
    }
    assert missing_buckets(values, env) == []
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["env"]["AD_LANDING_URL"] == f"s3://{name}-landing/landing"
    assert deployment["env"]["AD_LAKE_URL"] == f"s3://{name}-lake/lake"
    assert deployment["env"]["AD_MLFLOW_ARTIFACTS"] == f"s3://{name}-mlflow-artifacts/mlflow"
    # The release image runs the trainer rank pods, in the namespace the IRSA roles trust.
    assert train_image_problems(values) == []
    assert deployment["env"]["AD_TRAIN_IMAGE"].endswith(f"/{name}/user-code:0.1.0")
    assert deployment["env"]["AD_TRAIN_NAMESPACE"] == "dagster"
    # No password in any values file: the tracking URI comes from the stage secret only.
    assert "AD_MLFLOW_TRACKING_URI" not in json.dumps(values)
    # The override replaced the whole list entry: nothing of the base deployment may be lost.
    base = _values()["dagster-user-deployments"]["deployments"][0]
    assert set(base) <= set(deployment)
    assert deployment["dagsterApiGrpcArgs"] == base["dagsterApiGrpcArgs"]
    assert deployment["image"]["tag"] == "0.1.0"


def test_values_yaml_defaults_are_the_prod_environment() -> None:
    """values.yaml alone (without an override) names prod's buckets: no placeholder left to fill in by hand."""
    assert missing_buckets(_values(), "prod") == []
    assert train_image_problems(_values()) == []
    assert "REPLACE" not in VALUES_YAML.read_text()


def test_bucket_names_per_environment() -> None:
    assert created_buckets("prod") == {
        "landing": "ad-fleet-landing",
        "lake": "ad-fleet-lake",
        "mlflow_artifacts": "ad-fleet-mlflow-artifacts",
        "compute_logs": "ad-fleet-dagster-logs",
    }
    assert created_buckets("dev")["landing"] == "ad-fleet-dev-landing"


def test_secrets_and_service_accounts_the_values_name_are_created() -> None:
    values = _helm_values("prod")
    addons = _module("modules/k8s-addons")
    defaults = _var_defaults(addons)
    secrets = _blocks(addons, "resource", "kubernetes_secret_v1")
    created = {
        defaults[body["metadata"][0]["name"].removeprefix("${var.").removesuffix("}")] for body in secrets.values()
    }
    assert uncreated_secrets(values, addons) == []
    assert created == {"dagster-postgresql-secret", "ad-platform-aws", QAIHUB_SECRET, MLFLOW_SECRET}
    assert "postgresql-password" in secrets["postgres"]["data"]
    # The pods read AD_MLFLOW_TRACKING_URI from the MLflow secret (envFrom of the train and compile stages).
    assert set(secrets["mlflow"]["data"]) == {"AD_MLFLOW_TRACKING_URI"}
    assert {s for s, spec in STAGE_SPECS.items() if MLFLOW_SECRET in spec.env_secrets} == {"train", "compile"}
    # ... written only once the database it names exists (the in-cluster createdb Job).
    assert secrets["mlflow"]["depends_on"] == ["${kubernetes_job_v1.mlflow_db}"]
    createdb = _blocks(addons, "resource", "kubernetes_job_v1")["mlflow_db"]
    assert "CREATE DATABASE ${var.mlflow_database}" in json.dumps(createdb)

    accounts = _identity_service_accounts()
    assert values["serviceAccount"]["name"] == accounts["dagster"] == "ad-platform-dagster"
    user = values["dagster-user-deployments"]["serviceAccount"]
    assert user["name"] == accounts["user_code"] == "ad-platform-user-code"
    assert user["annotations"]["eks.amazonaws.com/role-arn"].endswith("-user_code")
    # The chart creates those two; Terraform creates one per GPU stage: exactly the stage table's GPU stages.
    gpu_stages = {s for s, spec in STAGE_SPECS.items() if spec.pool == "gpu"}
    call = _module_calls("modules/platform")["k8s_addons"]["stage_service_accounts"]
    assert re.search(r"for stage in \[(.*?)\]", call)
    listed = set(re.findall(r"'(\w+)'|\"(\w+)\"", re.search(r"for stage in \[(.*?)\]", call).group(1)))
    assert {a or b for a, b in listed} == gpu_stages == {"train", "compile"}
    assert set(ROLE_BUCKETS) == set(accounts)
    # Each IRSA role trusts exactly its own service account in the release namespace.
    assume = _blocks(_module("modules/identity"), "data", "aws_iam_policy_document")["assume"]
    sub = next(c for c in assume["statement"][0]["condition"] if c["variable"].endswith(":sub"))
    assert sub["values"] == ["system:serviceaccount:${var.namespace}:${each.value}"]
    assert _var_defaults(_module("modules/platform"))["namespace"] == "dagster"


def test_override_uses_only_chart_keys() -> None:
    from tests.deploy.test_k8s import CHART_KEYS, _unknown_keys

    # The chart's ServiceAccount model (create/name/annotations) at the top level and in the subchart.
    service_account = {"create": None, "name": None, "annotations": None}
    keys = copy.deepcopy(CHART_KEYS)
    keys["serviceAccount"] = service_account
    keys["dagster-user-deployments"]["serviceAccount"] = service_account
    override = _outputs_to_values().values_override(simulated_outputs("dev"), "0.2.0", _values())
    assert _unknown_keys(override, keys) == []
    assert _unknown_keys(_helm_values("dev"), keys) == []


def test_outputs_script_reads_only_outputs_every_env_defines() -> None:
    tool = _outputs_to_values()
    for env in ENVS:
        defined = set(_blocks(_module(f"envs/{env}"), "output", None)) | {
            n for block in _module(f"envs/{env}").get("output", []) for n in block
        }
        assert set(tool.REQUIRED_OUTPUTS) <= defined, env
    platform = {n for block in _module("modules/platform").get("output", []) for n in block}
    assert {n for block in _module("envs/prod").get("output", []) for n in block} == platform
    with pytest.raises(KeyError, match="image_repository"):
        tool.values_override({k: v for k, v in simulated_outputs("dev").items() if k != "image_repository"}, "x")


def test_outputs_script_cli(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(simulated_outputs("dev")))
    proc = subprocess.run(
        [sys.executable, str(TF / "outputs_to_values.py"), "--image-tag", "1.2.3"],
        stdin=outputs.open(),
        capture_output=True,
        text=True,
        check=True,
    )
    override = yaml.safe_load(proc.stdout)
    assert override["postgresql"]["postgresqlHost"] == "ad-fleet-dev.abc123.eu-central-1.rds.amazonaws.com"
    assert override["computeLogManager"]["config"]["s3ComputeLogManager"] == {
        "bucket": "ad-fleet-dev-dagster-logs",
        "prefix": "compute-logs",
        "region": "eu-central-1",
    }
    assert override["dagster-user-deployments"]["deployments"][0]["image"] == {
        "repository": "123456789012.dkr.ecr.eu-central-1.amazonaws.com/ad-fleet-dev/user-code",
        "tag": "1.2.3",
        "pullPolicy": "IfNotPresent",
    }
    env = override["dagster-user-deployments"]["deployments"][0]["env"]
    assert env["AD_TRAIN_IMAGE"] == "123456789012.dkr.ecr.eu-central-1.amazonaws.com/ad-fleet-dev/user-code:1.2.3"
    assert env["AD_MLFLOW_ARTIFACTS"] == "s3://ad-fleet-dev-mlflow-artifacts/mlflow"


def test_gpu_node_group_matches_the_gpu_stages() -> None:
    eks = _module("modules/eks")
    assert gpu_taints(eks) == [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]
    assert node_group_labels(eks, "gpu") == {POOL_LABEL: "gpu"}
    assert node_group_labels(eks, "cpu") == {POOL_LABEL: "cpu"}
    assert "taint" not in _blocks(eks, "resource", "aws_eks_node_group")["cpu"]
    configs = {stage: k8s_config(stage) for stage in STAGE_SPECS}
    assert pool_mismatches(configs, eks) == []
    gpu = _blocks(eks, "resource", "aws_eks_node_group")["gpu"]
    assert gpu["scaling_config"][0]["min_size"] == 0  # scales to zero
    assert gpu["ami_type"] == "AL2023_x86_64_NVIDIA"
    # Scale-from-zero template tags carry the same label and taint.
    tags = _locals(eks)["gpu_node_template_tags"]
    assert tags["k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"] == "present:NoSchedule"
    assert tags["k8s.io/cluster-autoscaler/node-template/label/${var.pool_label}"] == "gpu"
    # The device plugin runs where the GPU stages run and tolerates the same taint.
    plugin = _blocks(_module("modules/k8s-addons"), "resource", "helm_release")["nvidia_device_plugin"]
    assert 'nodeSelector = { (var.pool_label) = "gpu" }' in _raw("modules/k8s-addons/main.tf")
    assert plugin["chart"] == "nvidia-device-plugin"
    assert 'key      = "nvidia.com/gpu"' in _raw("modules/k8s-addons/main.tf")
    assert _var_defaults(_module("modules/k8s-addons"))["pool_label"] == POOL_LABEL == _var_defaults(eks)["pool_label"]


def _raw(rel: str) -> str:
    return (TF / rel).read_text()


def _postgres_major_of_tests() -> str:
    """The PostgreSQL major the tests run against: the local server binary when present, else the doc's."""
    from tests.support.postgres_server import find_pg_bindir

    bindir = find_pg_bindir()
    if bindir is not None:
        out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True)
        return re.search(r"(\d+)\.\d+", out.stdout).group(1)  # type: ignore[union-attr]
    return re.search(r"tests run against (\d+)", DEPLOY_DOC.read_text()).group(1)  # type: ignore[union-attr]


def test_rds_engine_major_equals_the_tested_postgres() -> None:
    metadata = _module("modules/metadata")
    db = _blocks(metadata, "resource", "aws_db_instance")["this"]
    major = _locals(metadata)["engine_major"]
    assert db["engine"] == "postgres" and db["engine_version"] == "${local.engine_major}"
    assert major == _postgres_major_of_tests() == "15"
    assert f"tests run against {major}" in DEPLOY_DOC.read_text()
    assert _blocks(metadata, "resource", "aws_db_parameter_group")["this"]["family"] == "postgres${local.engine_major}"
    assert db["storage_encrypted"] is True and db["deletion_protection"] is True and db["publicly_accessible"] is False
    assert db["backup_retention_period"] == "${var.backup_retention_days}"
    assert _var_defaults(metadata)["backup_retention_days"] >= 7
    assert _var_defaults(metadata)["databases"] == ["dagster", "mlflow"]
    assert _values()["postgresql"]["postgresqlDatabase"] == "dagster"
    assert "kms_key_id" in _blocks(metadata, "resource", "aws_secretsmanager_secret")["db"]


def test_every_bucket_is_protected() -> None:
    storage = _module("modules/storage")
    assert unprotected_buckets(storage) == []
    assert tls_only(storage) == []
    sse = _blocks(storage, "resource", "aws_s3_bucket_server_side_encryption_configuration")["this"]
    assert sse["rule"][0]["apply_server_side_encryption_by_default"][0]["sse_algorithm"] == "aws:kms"
    lifecycle = _raw("modules/storage/main.tf")
    assert 'storage_class = "STANDARD_IA"' in lifecycle and "/tmp/" in lifecycle


def test_irsa_policies_are_least_privilege() -> None:
    assert policy_problems(_module("modules/identity")) == []


def test_checkov_skips_carry_their_reason() -> None:
    skips = [(tf, m) for tf in TF.rglob("*.tf") for m in re.finditer(r"#\s*checkov:skip=([^\n]*)", tf.read_text())]
    assert skips, "expected documented skips"
    for tf, m in skips:
        check, _, reason = m.group(1).partition(":")
        assert re.fullmatch(r"CKV2?_AWS_\d+", check), (tf, m.group(0))
        assert len(reason.strip()) >= 20, f"{tf.relative_to(REPO_ROOT)}: {check} skipped without a reason"


CHECKOV = REPO_ROOT / ".venv-deploy" / "bin" / "checkov"


@pytest.mark.skipif(not CHECKOV.exists(), reason="checkov is not installed (.venv-deploy: `make checkov-venv`)")
def test_checkov_finds_no_failed_check() -> None:
    proc = subprocess.run(
        [str(CHECKOV), "--quiet", "--compact", "--skip-download", "--framework", "terraform", "-d", str(TF)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary on PATH")
def test_terraform_fmt_check() -> None:
    proc = subprocess.run(["terraform", "fmt", "-check", "-recursive", str(TF)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("env", ENVS)
def test_tracking_resource_of_the_mlflow_pods_is_postgres_and_s3(
    env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The definitions' resource (tracking_from_env, in_definitions) built from a train pod's environment: the
    user deployment's env from the Helm values plus the MLflow secret as Terraform writes it."""
    pod_env = {**_helm_values(env)["dagster-user-deployments"]["deployments"][0]["env"]}
    pod_env["AD_MLFLOW_TRACKING_URI"] = deployed_tracking_uri(env, db_password="s3cr/t")
    for key, value in pod_env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.delenv("AD_MLFLOW_REGISTRY_URI", raising=False)
    declared = tracking_from_env(tmp_path, in_definitions=True)
    assert declared.tracking_uri == "AD_MLFLOW_TRACKING_URI"  # an EnvVar: the password never shows in the UI
    tracking = declared.process_config_and_initialize()
    assert tracking_store_problems(tracking, env) == []
    assert not (tmp_path / "mlflow").exists()  # not the embedded SQLite default
    assert urlparse(tracking.tracking_uri).password == "s3cr%2Ft"  # urlencode()d in the secret
    # MLflow itself takes both: the SQLAlchemy store for the URI, the S3 repository for the artifacts.
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository
    from mlflow.utils.uri import extract_db_type_from_uri

    assert extract_db_type_from_uri(tracking.tracking_uri) == "postgresql"
    assert isinstance(get_artifact_repository(tracking.artifact_location), S3ArtifactRepository)


def test_train_launcher_role_grants_exactly_the_launchers_api_calls() -> None:
    assert launcher_permissions() == {
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("batch", "jobs/status", "get"),
        ("", "services", "create"),
        ("", "services", "delete"),
        ("", "pods", "list"),
        ("", "pods/log", "get"),
    }
    assert rbac_problems(_module("modules/k8s-addons")) == []


# --- tests: each check fails on a planted error --------------------------------------------------------------


def test_planted_bucket_the_values_name_but_terraform_does_not_create() -> None:
    values = _values()
    values["dagster-user-deployments"]["deployments"][0]["env"]["AD_MODELS_URL"] = "s3://ad-fleet-models/m"
    assert missing_buckets(values, "prod") == ["ad-fleet-models"]
    values = _values()
    values["computeLogManager"]["config"]["s3ComputeLogManager"]["bucket"] = "ad-fleet-logs"
    assert missing_buckets(values, "prod") == ["ad-fleet-logs"]


def test_planted_gpu_toleration_that_does_not_match_the_taint() -> None:
    eks = _module("modules/eks")
    configs = {stage: k8s_config(stage) for stage in STAGE_SPECS}
    configs["train"]["pod_spec_config"]["tolerations"] = [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    ]
    assert pool_mismatches(configs, eks) == [
        "train: tolerations [{'key': 'nvidia.com/gpu', 'operator': 'Equal', 'value': 'true', 'effect': "
        "'NoSchedule'}] do not tolerate GPU taint [{'key': 'nvidia.com/gpu', 'value': 'present', 'effect': "
        "'NoSchedule'}]"
    ]
    # The other way round: the node group's taint changes and the stage table no longer matches.
    bad = copy.deepcopy(dict(eks))
    bad["resource"] = copy.deepcopy(eks["resource"])
    for block in bad["resource"]:
        if "aws_eks_node_group" in block and "gpu" in block["aws_eks_node_group"]:
            block["aws_eks_node_group"]["gpu"]["taint"][0]["effect"] = "NO_EXECUTE"
    problems = pool_mismatches({s: k8s_config(s) for s in STAGE_SPECS}, bad)
    assert [p.split(":")[0] for p in problems] == ["train", "compile"]


def test_planted_bucket_without_encryption() -> None:
    text = _raw("modules/storage/main.tf")
    start = text.index('resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs"')
    end = text.index('resource "aws_s3_bucket_public_access_block" "access_logs"')
    storage = _clean(hcl2.loads(text[:start] + text[end:]))
    assert unprotected_buckets(storage) == [
        "bucket.access_logs: missing aws_s3_bucket_server_side_encryption_configuration"
    ]
    no_lake_rule = text.replace(
        'resource "aws_s3_bucket_lifecycle_configuration" "lake"', 'resource "null_resource" "lake"'
    )
    assert unprotected_buckets(_clean(hcl2.loads(no_lake_rule))) == [
        "bucket.this[lake]: missing aws_s3_bucket_lifecycle_configuration"
    ]
    planted = _clean(hcl2.loads(text + '\nresource "aws_s3_bucket" "scratch" {\n  bucket = "x"\n}\n'))
    assert [p for p in unprotected_buckets(planted) if "scratch" in p] == [
        f"bucket.scratch: missing {c}" for c in _BUCKET_COMPANIONS
    ]


def test_planted_role_with_a_star_resource() -> None:
    text = _raw("modules/identity/main.tf").replace(
        'resources = ["${local.logs}/${var.compute_log_prefix}/*"]\n  }\n  statement {\n    sid       = "Kms"',
        'resources = ["*"]\n  }\n  statement {\n    sid       = "Kms"',
        1,
    )
    assert text != _raw("modules/identity/main.tf")
    assert policy_problems(_clean(hcl2.loads(text))) == ["user_code: `*` resource '*'"]
    other_bucket = _raw("modules/identity/main.tf").replace(
        "resources = [local.logs]", "resources = [local.landing]", 1
    )
    assert policy_problems(_clean(hcl2.loads(other_bucket))) == ["dagster: names bucket 'landing' it does not need"]
    arn_star = _raw("modules/identity/main.tf").replace(
        "resources = [var.kms_key_arn]", 'resources = ["arn:aws:s3:::*"]', 1
    )
    assert policy_problems(_clean(hcl2.loads(arn_star))) == ["user_code: `*` resource 'arn:aws:s3:::*'"]


def test_planted_mlflow_artifacts_in_a_bucket_terraform_does_not_create() -> None:
    values = _values()
    values["dagster-user-deployments"]["deployments"][0]["env"]["AD_MLFLOW_ARTIFACTS"] = "s3://ad-fleet-models/mlflow"
    assert missing_buckets(values, "prod") == ["ad-fleet-models"]


def test_planted_secret_the_pods_read_but_terraform_does_not_create() -> None:
    text = _raw("modules/k8s-addons/main.tf").replace(
        'resource "kubernetes_secret_v1" "mlflow"', 'resource "kubernetes_config_map_v1" "mlflow"'
    )
    addons = _clean(hcl2.loads(text))
    addons["variable"] = _module("modules/k8s-addons")["variable"]
    assert uncreated_secrets(_helm_values("prod"), addons) == [MLFLOW_SECRET]
    values = _helm_values("prod")
    values["dagster-user-deployments"]["deployments"][0]["envSecrets"].append({"name": "ad-platform-mlflow-creds"})
    assert uncreated_secrets(values, _module("modules/k8s-addons")) == ["ad-platform-mlflow-creds"]


def test_planted_train_image_that_is_not_the_release_image() -> None:
    values = _values()
    values["dagster-user-deployments"]["deployments"][0]["image"]["tag"] = "0.2.0"  # tag bumped, AD_TRAIN_IMAGE not
    assert train_image_problems(values) == [
        "AD_TRAIN_IMAGE 'registry.example.com/ad-platform/user-code:0.1.0' != "
        "'registry.example.com/ad-platform/user-code:0.2.0'"
    ]
    del values["dagster-user-deployments"]["deployments"][0]["env"]["AD_TRAIN_LAUNCHER"]
    assert train_image_problems(values)[-1] == "AD_TRAIN_LAUNCHER None != 'kubernetes'"


def test_planted_tracking_uri_without_psycopg2_tls_and_mlflow_database() -> None:
    text = _raw("modules/k8s-addons/main.tf").replace(
        '"postgresql+psycopg2://${var.db_username}:${urlencode(var.db_password)}@${var.db_host}:${var.db_port}'
        '/${var.mlflow_database}?sslmode=require"',
        '"postgresql://${var.db_username}:${var.db_password}@${var.db_host}:${var.db_port}/dagster"',
    )
    assert text != _raw("modules/k8s-addons/main.tf")
    tracking = MlflowTracking(
        tracking_uri=deployed_tracking_uri("prod", _clean(hcl2.loads(text))),
        artifact_location="s3://ad-fleet-lake/mlflow",
    )
    assert tracking_store_problems(tracking, "prod") == [
        "tracking scheme 'postgresql' is not postgresql+psycopg2",
        "tracking database '/dagster' is not the MLflow database",
        "tracking URI does not require TLS (RDS forces it)",
        "artifacts 's3://ad-fleet-lake/mlflow' != 's3://ad-fleet-mlflow-artifacts/mlflow'",
    ]


def test_planted_train_launcher_role_without_pod_logs_and_with_secrets() -> None:
    text = _raw("modules/k8s-addons/main.tf")
    no_logs = text.replace('resources  = ["pods/log"]', 'resources  = ["pods/status"]')
    assert no_logs != text
    assert rbac_problems(_clean(hcl2.loads(no_logs))) == [
        "train launcher may not get core/pods/log",
        "train launcher needs no get on core/pods/status",
    ]
    wrong_subject = text.replace('gpu_stage["train"].metadata', 'gpu_stage["compile"].metadata')
    assert rbac_problems(_clean(hcl2.loads(wrong_subject))) == [
        "train launcher Role bound to '${kubernetes_service_account_v1.gpu_stage[\"compile\"].metadata[0].name}', "
        "not the train service account"
    ]


# --- one locked environment ----------------------------------------------------------------------------------

LOCKS = {"requirements.lock": False, "requirements-dev.lock": True}  # file -> includes the dev extra


def parse_lock(text: str) -> dict[str, tuple[str, set[str]]]:
    """`name==version` -> (version, the `# via` parents) for every entry of a pip-compile lock."""
    entries: dict[str, tuple[str, set[str]]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", line)
        if m:
            current = _norm(m.group(1))
            entries[current] = (m.group(2), set())
        elif current and line.startswith("    # via"):
            if parent := line.removeprefix("    # via").strip():
                entries[current][1].add(parent)
        elif current and line.startswith("    #   "):
            entries[current][1].add(line.removeprefix("    #   ").strip())
    return entries


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_disagreements(pyproject: dict[str, Any], lock_text: str, with_dev: bool) -> list[str]:
    """Every pyproject requirement the lock does not satisfy, and every direct entry pyproject no longer has."""
    project = pyproject["project"]
    raw = list(project["dependencies"]) + (list(project["optional-dependencies"]["dev"]) if with_dev else [])
    reqs = [Requirement(r) for r in raw]
    lock = parse_lock(lock_text)
    problems = []
    for text, req in zip(raw, reqs, strict=True):
        name = _norm(req.name)
        if name not in lock:
            problems.append(f"{text}: not in the lock")
        elif not req.specifier.contains(lock[name][0], prereleases=True):
            problems.append(f"{text}: lock pins {name}=={lock[name][0]}")
    direct = {n for n, (_, via) in lock.items() if any(p.startswith(project["name"]) for p in via)}
    problems += [
        f"{n}: locked as a direct dependency but not in pyproject.toml"
        for n in sorted(direct - {_norm(r.name) for r in reqs})
    ]
    return problems


@pytest.mark.parametrize("lock_file", sorted(LOCKS))
def test_lock_agrees_with_pyproject(lock_file: str) -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    text = (REPO_ROOT / lock_file).read_text()
    assert lock_disagreements(pyproject, text, LOCKS[lock_file]) == []
    lock = parse_lock(text)
    assert lock["dagster"][0] == "1.13.27"
    assert all(
        "--hash=sha256:" in block for block in re.split(r"\n(?=[A-Za-z0-9])", text) if "==" in block.split("\n")[0]
    )
    # No machine path (find-links, local index) ever lands in the repository.
    assert not re.search(r"(/opt/|/work/|/home/|file://|--find-links|--extra-index-url)", text)
    assert "make lock" in text  # the header names the one command that regenerates it


@pytest.mark.parametrize("lock_file", sorted(LOCKS))
def test_lock_has_no_cuda_build(lock_file: str) -> None:
    """pip-compile reads pip's configuration, so with torch added it picks the local CPU wheel (2.13.0+cpu),
    never the CUDA build and its GBs of nvidia-* packages (uv would, see the field notes)."""
    lock = parse_lock((REPO_ROOT / lock_file).read_text())
    assert sorted(n for n in lock if n.startswith("nvidia-")) == []
    if "torch" in lock:
        assert lock["torch"][0].endswith("+cpu"), lock["torch"]


def test_runtime_lock_is_the_dev_locks_subset() -> None:
    """Same code version, same libraries: the image (requirements.lock) and the venv pin identical versions."""
    runtime = parse_lock((REPO_ROOT / "requirements.lock").read_text())
    dev = parse_lock((REPO_ROOT / "requirements-dev.lock").read_text())
    assert {n: v for n, (v, _) in runtime.items()} == {n: dev[n][0] for n in runtime}
    assert {"pytest", "ruff", "moto", "playwright", "pip-tools", "python-hcl2"} <= set(dev) - set(runtime)


def test_lock_disagreement_names_the_pin() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    text = (REPO_ROOT / "requirements-dev.lock").read_text()
    bumped = copy.deepcopy(pyproject)
    deps = bumped["project"]["dependencies"]
    deps[deps.index("duckdb==2.0.0")] = "duckdb==2.0.1"
    deps.append("rerun-sdk==0.41.0")
    deps.remove("lz4==4.4.5")
    assert lock_disagreements(bumped, text, with_dev=True) == [
        "duckdb==2.0.1: lock pins duckdb==2.0.0",
        "rerun-sdk==0.41.0: not in the lock",
        "lz4: locked as a direct dependency but not in pyproject.toml",
    ]
    # Range specifiers are checked against the pinned version too.
    ranged = copy.deepcopy(pyproject)
    ranged["project"]["dependencies"] = [d if not d.startswith("pandas") else "pandas>=3" for d in deps]
    assert "pandas>=3: lock pins pandas==2.3.3" in lock_disagreements(ranged, text, with_dev=True)


def test_dockerfile_and_make_install_from_the_lock() -> None:
    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    assert "COPY requirements.lock" in dockerfile
    assert "--require-hashes" in dockerfile and "-r requirements.lock" in dockerfile
    makefile = (REPO_ROOT / "Makefile").read_text()
    venv_recipe = makefile.split("$(STAMP): ", 1)[1].split("\n\n", 1)[0]
    assert "--require-hashes --no-deps -r $(DEV_LOCK)" in venv_recipe
    assert "pip check" in venv_recipe
    # CI scans Terraform with checkov inside `make test`: its venv is built before the tests run.
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert ci.index("make checkov-venv") < ci.rindex("make test")


def _iter_tf() -> Iterator[Path]:
    yield from TF.rglob("*.tf")


def test_no_machine_paths_in_terraform() -> None:
    for tf in _iter_tf():
        assert not re.search(r"/opt/|/work/|/home/", tf.read_text()), tf


def test_gpu_stage_pods_run_as_the_service_accounts_terraform_creates() -> None:
    """Train and compile pods use their own IRSA roles (model and engine buckets), not the code server's."""
    accounts = _identity_service_accounts()
    for stage in ("train", "compile"):
        pod_spec = k8s_config(stage)["pod_spec_config"]
        assert pod_spec["serviceAccountName"] == accounts[stage] == STAGE_SPECS[stage].service_account
    assert all("serviceAccountName" not in k8s_config(s)["pod_spec_config"] for s in ("ingest", "decode", "sync"))
