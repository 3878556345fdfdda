"""Where the ranks of a training run: in the step's process, as local torchrun processes, or as pods.

Every launcher runs the same worker (``python -m ad_core.train.worker JOB_URI``, docs/training-at-scale.md)
through Dagster Pipes, so rank 0's per-epoch logs and metrics come back to the Dagster run:

* :class:`LocalTrainingLauncher`: 1 rank in the step's process (the asset calls the worker); N ranks as
  ``torchrun --standalone --nproc-per-node N`` (``ad_core.train.launch``, which records the first failed rank)
  launched with ``PipesSubprocessClient``.
* :class:`K8sTrainingLauncher`: an *indexed* Kubernetes Job of N pods (one per node, ``torchrun`` in each with
  one process per GPU of the train stage) and a headless Service giving pod 0 the stable DNS name the ranks
  rendezvous on, in a Pipes session built from dagster-k8s's pieces (env context injector, pod-log message
  reader on pod 0). ``PipesK8sClient`` itself launches exactly one pod, so it cannot start N ranks; a Kubeflow
  ``PyTorchJob`` would need the training operator (a CRD) in the cluster. The pods carry the train stage's pod
  config from the stage table (GPU pool node selector, toleration, ``nvidia.com/gpu``, /dev/shm, service
  account). A failed pod fails the Job (``backoffLimit: 0``, the Job controller then stops the other pods) and
  the run names the first failed rank with its termination message.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, ConfigurableResource, Failure, PipesSubprocessClient
from dagster._core.errors import DagsterPipesExecutionError
from pydantic import Field

from ad_common.stages import k8s_config, stage_spec

TRAIN_STAGE = "train"
JOB_LABEL = "ad-platform/train-job"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


class TrainingLauncher(ConfigurableResource):
    """Runs ``ranks`` ranks of the training job at ``job_uri`` (see the module docstring)."""

    @property
    def single_rank_in_process(self) -> bool:
        """Whether a 1-rank run trains in the step's own process (the asset then calls the worker directly)."""
        return False

    def launch(self, context: AssetExecutionContext, job_uri: str, ranks: int) -> None:
        raise NotImplementedError


def describe_failure(failure: dict[str, Any]) -> str:
    how = f"killed by {failure['signal']}" if failure.get("signal") else f"exit code {failure.get('exitcode')}"
    message = " ".join(str(failure.get("message") or "").split())
    return f"training rank {failure['rank']} failed ({how}): {message}"


class LocalTrainingLauncher(TrainingLauncher):
    """1 rank in the step's process; N ranks as local torchrun processes (gloo on CPU)."""

    @property
    def single_rank_in_process(self) -> bool:
        return True

    def launch(self, context: AssetExecutionContext, job_uri: str, ranks: int) -> None:
        with tempfile.TemporaryDirectory(prefix="ad-torchrun-") as tmp:
            failure_file = Path(tmp) / "failure.json"
            command = [
                sys.executable, "-m", "ad_core.train.launch", "--failure-file", str(failure_file),
                "--standalone", "--nproc-per-node", str(ranks), "--module", "ad_core.train.worker", job_uri,
            ]  # fmt: skip
            context.log.info(f"launching {ranks} ranks: {' '.join(command[2:])}")
            try:
                PipesSubprocessClient().run(command=command, context=context)
            except DagsterPipesExecutionError as exc:
                if failure_file.is_file():
                    failure = json.loads(failure_file.read_text())
                    raise Failure(
                        describe_failure(failure),
                        metadata={"rank": failure["rank"], "traceback": failure.get("traceback", "")},
                    ) from exc
                raise Failure(f"torchrun failed before any rank reported: {exc}") from exc


def training_job_manifests(
    name: str, ranks: int, image: str, job_uri: str, env: dict[str, str], master_port: int = 29500
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The headless Service and the indexed Job of ``ranks`` pods (camelCase manifests, schema-valid)."""
    spec = stage_spec(TRAIN_STAGE)
    pod_config = k8s_config(TRAIN_STAGE)
    labels = {**pod_config["pod_template_spec_metadata"]["labels"], JOB_LABEL: name}
    gpus = spec.gpus or 1
    command = [
        "python", "-m", "torch.distributed.run", "--nnodes", str(ranks), "--node-rank", "$(NODE_RANK)",
        "--nproc-per-node", str(gpus), "--master-addr", f"{name}-0.{name}", "--master-port", str(master_port),
        "--module", "ad_core.train.worker", job_uri,
    ]  # fmt: skip
    container = {
        "name": "trainer",
        "image": image,
        "command": command,
        "env": [
            {
                "name": "NODE_RANK",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}},
            },
            *({"name": k, "value": v} for k, v in sorted(env.items())),
        ],
        "ports": [{"name": "c10d", "containerPort": master_port}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **pod_config["container_config"],
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "selector": {JOB_LABEL: name},
            "publishNotReadyAddresses": True,  # ranks rendezvous before any pod is "ready"
            "ports": [{"name": "c10d", "port": master_port, "targetPort": master_port}],
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": ranks,
            "parallelism": ranks,
            "backoffLimit": 0,
            "activeDeadlineSeconds": pod_config["job_spec_config"]["activeDeadlineSeconds"],
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    **pod_config["pod_spec_config"],
                    "subdomain": name,  # pod i is <name>-i.<name>: rank 0 is the rendezvous address
                    "restartPolicy": "Never",
                    "containers": [container],
                },
            },
        },
    }
    return service, job


def first_failed_rank(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The root cause among a Job's pods (API dicts): the earliest terminated, failed trainer container; pods
    the Job controller stopped afterwards (SIGTERM, exit 143) only when nothing else failed."""
    failed = []
    for pod in pods:
        for status in pod.get("status", {}).get("containerStatuses") or []:
            terminated = (status.get("state") or {}).get("terminated")
            if terminated and terminated.get("exitCode", 0) != 0:
                index = pod["metadata"].get("annotations", {}).get(COMPLETION_INDEX, "?")
                failed.append(
                    (str(terminated.get("finishedAt", "")), terminated.get("exitCode") == 143, index, pod, terminated)
                )
    if not failed:
        return None
    _at, _stopped, index, pod, terminated = min(failed, key=lambda f: (f[1], f[0]))
    return {
        "rank": index,
        "pod": pod["metadata"]["name"],
        "exitcode": terminated.get("exitCode"),
        "signal": None,
        "message": f"{terminated.get('reason', '')}: {terminated.get('message', '')}".strip(": "),
    }


class K8sTrainingLauncher(TrainingLauncher):
    """N pods on the GPU pool: an indexed Job + headless Service, rank 0's logs through Pipes (not run here)."""

    image: str = Field(description="The platform image (the same as the code server's).")
    namespace: str = "dagster"
    env: dict[str, str] = Field(
        default={}, description="Environment of the trainer pods (lake URL, AWS endpoint/region, MLflow URI)."
    )
    master_port: int = 29500
    poll_interval_s: float = 10.0
    start_timeout_s: float = Field(default=1800.0, description="How long rank 0's pod may take to be scheduled.")

    def launch(self, context: AssetExecutionContext, job_uri: str, ranks: int) -> None:
        import kubernetes
        from dagster import open_pipes_session
        from dagster._core.pipes.utils import PipesEnvContextInjector
        from dagster_k8s.pipes import PipesK8sPodLogsMessageReader

        kubernetes.config.load_incluster_config()
        core, batch = kubernetes.client.CoreV1Api(), kubernetes.client.BatchV1Api()
        name = f"train-{context.run.run_id[:8]}-{context.asset_key.path[0]}"
        reader = PipesK8sPodLogsMessageReader()
        with open_pipes_session(context, context_injector=PipesEnvContextInjector(), message_reader=reader) as session:
            env = {**self.env, **session.get_bootstrap_env_vars()}
            service, job = training_job_manifests(name, ranks, self.image, job_uri, env, self.master_port)
            core.create_namespaced_service(self.namespace, service)
            batch.create_namespaced_job(self.namespace, job)
            try:
                pod0 = self._pod(core, name, "0")
                reader.consume_pod_logs(context, core, pod0, self.namespace)  # returns when rank 0's pod ends
                while True:
                    status = batch.read_namespaced_job_status(name, self.namespace).status
                    if status.succeeded == ranks:
                        return
                    if status.failed:
                        pods = core.list_namespaced_pod(self.namespace, label_selector=f"{JOB_LABEL}={name}")
                        dicts = kubernetes.client.ApiClient().sanitize_for_serialization(pods)["items"]
                        failure = first_failed_rank(dicts) or {
                            "rank": "?",
                            "message": "the Job failed",
                            "exitcode": None,
                        }
                        raise Failure(describe_failure(failure), metadata={"job": name, "pod": failure.get("pod", "")})
                    time.sleep(self.poll_interval_s)
            finally:
                batch.delete_namespaced_job(name, self.namespace, propagation_policy="Background")
                core.delete_namespaced_service(name, self.namespace)

    def _pod(self, core: Any, name: str, index: str) -> str:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            pods = core.list_namespaced_pod(
                self.namespace, label_selector=f"{JOB_LABEL}={name},{COMPLETION_INDEX}={index}"
            )
            running = [p for p in pods.items if p.status.phase in ("Running", "Succeeded", "Failed")]
            if running:
                return str(running[0].metadata.name)
            time.sleep(self.poll_interval_s)
        raise Failure(f"rank {index} of {name} did not start within {self.start_timeout_s:.0f} s (GPU pool full?)")


# What trainer pods need to reach the lake (passed through from the step's environment as plain values). The MLflow
# URI holds the database password: the pods get it from the train stage's secret (envFrom), never in the Job spec.
POD_ENV = ("AD_LAKE_URL", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


def training_from_env() -> TrainingLauncher:
    """``AD_TRAIN_LAUNCHER=kubernetes`` (+ ``AD_TRAIN_IMAGE``, ``AD_TRAIN_NAMESPACE``): ranks as pods on the GPU
    pool; otherwise local (in-process for 1 rank, torchrun for N)."""
    import os

    if os.environ.get("AD_TRAIN_LAUNCHER") == "kubernetes":
        return K8sTrainingLauncher(
            image=os.environ["AD_TRAIN_IMAGE"],
            namespace=os.environ.get("AD_TRAIN_NAMESPACE", "dagster"),
            env={k: os.environ[k] for k in POD_ENV if os.environ.get(k)},
        )
    return LocalTrainingLauncher()
