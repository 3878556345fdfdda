"""`terraform output -json` -> a Helm values override for deploy/helm/values.yaml (no placeholder by hand).

    terraform -chdir=deploy/terraform/envs/prod output -json \
      | python deploy/terraform/outputs_to_values.py --image-tag 0.1.0 > values-prod.yaml
    helm upgrade --install ad-platform dagster/dagster --version 1.13.27 -n dagster \
      -f deploy/helm/values.yaml -f values-prod.yaml

Needs PyYAML (in the platform's venv) to read the base values. The override is JSON, which is valid YAML.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

BASE_VALUES = Path(__file__).resolve().parents[1] / "helm" / "values.yaml"

# Output names read here; tests/deploy/test_terraform.py checks every env root defines them.
REQUIRED_OUTPUTS = (
    "aws_region",
    "postgresql_host",
    "postgresql_username",
    "postgresql_database",
    "landing_bucket",
    "landing_prefix",
    "lake_bucket",
    "lake_prefix",
    "mlflow_artifact_bucket",
    "mlflow_artifact_prefix",
    "compute_log_bucket",
    "compute_log_prefix",
    "image_repository",
    "namespace",
    "service_accounts",
    "irsa_role_arns",
)
ROLE_ARN_ANNOTATION = "eks.amazonaws.com/role-arn"


def _plain(outputs: dict[str, Any]) -> dict[str, Any]:
    """`terraform output -json` wraps each output as {"value": ..., "type": ..., "sensitive": ...}."""
    missing = [name for name in REQUIRED_OUTPUTS if name not in outputs]
    if missing:
        raise KeyError(f"terraform outputs missing: {', '.join(missing)}")
    return {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in outputs.items()}


def values_override(outputs: dict[str, Any], image_tag: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The values that differ per environment, all from Terraform outputs (plus the release's image tag).

    Helm replaces lists whole, so the one user deployment is the base values' entry merged with the override.
    """
    if base is None:
        base = yaml.safe_load(BASE_VALUES.read_text())
    (base_deployment,) = base["dagster-user-deployments"]["deployments"]
    out = _plain(outputs)
    region = out["aws_region"]
    accounts, roles = out["service_accounts"], out["irsa_role_arns"]
    image = {"repository": out["image_repository"], "tag": image_tag}
    return {
        "postgresql": {
            "postgresqlHost": out["postgresql_host"],
            "postgresqlUsername": out["postgresql_username"],
            "postgresqlDatabase": out["postgresql_database"],
        },
        # Webserver + daemon share the chart's service account; the IRSA role lets them read/write step logs.
        "serviceAccount": {
            "create": True,
            "name": accounts["dagster"],
            "annotations": {ROLE_ARN_ANNOTATION: roles["dagster"]},
        },
        "dagster-user-deployments": {
            # The code server and every run/step pod it launches (container context service_account_name).
            "serviceAccount": {
                "create": True,
                "name": accounts["user_code"],
                "annotations": {ROLE_ARN_ANNOTATION: roles["user_code"]},
            },
            "deployments": [
                merge(
                    base_deployment,
                    {
                        "image": image,
                        "env": {
                            "AD_LANDING_URL": f"s3://{out['landing_bucket']}/{out['landing_prefix']}",
                            "AD_LAKE_URL": f"s3://{out['lake_bucket']}/{out['lake_prefix']}",
                            "AD_MLFLOW_ARTIFACTS": f"s3://{out['mlflow_artifact_bucket']}/{out['mlflow_artifact_prefix']}",
                            # The rank pods of a training run the code location's own image, in the release namespace.
                            "AD_TRAIN_IMAGE": f"{image['repository']}:{image['tag']}",
                            "AD_TRAIN_NAMESPACE": out["namespace"],
                            "AWS_REGION": region,
                            "AWS_DEFAULT_REGION": region,
                        },
                    },
                )
            ],
        },
        "computeLogManager": {
            "config": {
                "s3ComputeLogManager": {
                    "bucket": out["compute_log_bucket"],
                    "prefix": out["compute_log_prefix"],
                    "region": region,
                }
            }
        },
    }


def merge(base: Any, override: Any) -> Any:
    """Helm's merge of two values files: maps merge key by key, anything else (lists too) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: merge(base[k], v) if k in base else v for k, v in override.items()}}
    return override


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-tag", required=True, help="immutable tag of the user-code image of this release")
    parser.add_argument("--base", type=Path, default=BASE_VALUES, help="the values file the override goes on top of")
    args = parser.parse_args(argv)
    override = values_override(json.load(sys.stdin), args.image_tag, yaml.safe_load(args.base.read_text()))
    json.dump(override, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
