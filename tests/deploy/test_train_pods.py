"""The Kubernetes objects of a multi-pod training run (indexed Job + headless Service), validated offline against
the Kubernetes 1.31 schema like the stage Jobs (tests/deploy/test_k8s.py), and the failed-rank diagnosis."""

from __future__ import annotations

import kubernetes_validate
import pytest

from ad_common.stages import GPU_RESOURCE, MLFLOW_SECRET, POOL_LABEL, stage_spec
from ad_resources.training import K8sTrainingLauncher, first_failed_rank, training_from_env, training_job_manifests


def test_training_pods_validate_and_carry_the_gpu_pool() -> None:
    service, job = training_job_manifests(
        "train-0123abcd-de", 4, "ad-platform:1", "s3://lake/models/de/job.json", {"AD_LAKE_URL": "s3://lake"}
    )
    kubernetes_validate.validate(service, "1.31", strict=True)
    kubernetes_validate.validate(job, "1.31", strict=True)
    spec, train = job["spec"], stage_spec("train")
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed",
        4,
        4,
        0,
    )
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["nodeSelector"] == {POOL_LABEL: "gpu"} and pod["serviceAccountName"] == train.service_account
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert container["resources"]["limits"][GPU_RESOURCE] == str(train.gpus)
    assert (
        pod["subdomain"] == service["metadata"]["name"] == "train-0123abcd-de"
        and service["spec"]["clusterIP"] == "None"
    )
    assert "train-0123abcd-de-0.train-0123abcd-de" in container["command"]  # rank 0's stable DNS name
    # The MLflow URI (with the database password) reaches the ranks from the train stage's secret, not the Job spec.
    assert container["envFrom"] == [{"secretRef": {"name": MLFLOW_SECRET}}]


def test_the_mlflow_uri_is_not_copied_into_the_rank_pods_env(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "AD_TRAIN_LAUNCHER": "kubernetes",
        "AD_TRAIN_IMAGE": "ecr/ad-fleet/user-code:0.1.0",
        "AD_TRAIN_NAMESPACE": "ml",
        "AD_LAKE_URL": "s3://ad-fleet-lake/lake",
        "AD_MLFLOW_TRACKING_URI": "postgresql+psycopg2://dagster:pw@rds:5432/mlflow",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    launcher = training_from_env()
    assert isinstance(launcher, K8sTrainingLauncher)
    assert (launcher.image, launcher.namespace) == ("ecr/ad-fleet/user-code:0.1.0", "ml")
    assert launcher.env["AD_LAKE_URL"] == "s3://ad-fleet-lake/lake" and "AD_MLFLOW_TRACKING_URI" not in launcher.env


def test_the_first_failed_pod_is_named_not_the_ones_the_job_stopped() -> None:
    def pod(index: str, code: int, at: str, reason: str, message: str = "") -> dict:
        terminated = {"exitCode": code, "finishedAt": at, "reason": reason, "message": message}
        return {"metadata": {"name": f"j-{index}", "annotations": {"batch.kubernetes.io/job-completion-index": index}},
                "status": {"containerStatuses": [{"state": {"terminated": terminated}}]}}  # fmt: skip

    pods = [
        pod("0", 143, "2026-12-03T10:00:05Z", "Error", "SIGTERM"),
        pod("2", 137, "2026-12-03T10:00:07Z", "OOMKilled"),
        pod("1", 0, "2026-12-03T10:00:01Z", "Completed"),
    ]
    failure = first_failed_rank(pods)
    assert failure is not None and (failure["rank"], failure["pod"], failure["message"]) == ("2", "j-2", "OOMKilled")
