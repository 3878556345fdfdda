"""MLflow tracking and registry as a resource: SQLite + an artifact folder under ``.state/mlflow`` by default,
PostgreSQL + S3 artifacts in production (``AD_MLFLOW_TRACKING_URI`` / ``AD_MLFLOW_ARTIFACTS``).

Why ours and not ``dagster_mlflow.mlflow_tracking``: that resource starts an MLflow run when the resource is
initialised and relies on the ``end_mlflow_on_run_finished`` *job* hook to end it. Asset materializations
(a UI "Materialize", a sensor or automation run) carry no such hook, so their MLflow runs stay RUNNING forever,
and a failed step leaves them RUNNING too unless ``cleanup_on_error`` is called from inside an ``except``. It
also keys the MLflow run on the Dagster run id, so two assets trained in one run would log into one MLflow
run. This resource opens one MLflow run per training (``with tracking.run(...)``) and always ends it:
FINISHED, FAILED on an exception, KILLED on an interrupt. MLflow's fluent API (``mlflow.log_*``,
``mlflow.pytorch.log_model``) keeps the tracking URI and the active run in process globals; ``run`` sets
them on entry, so two resources with different stores in one process work one after the other, not
interleaved.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
from dagster import ConfigurableResource, EnvVar
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from pydantic import Field

DEFAULT_EXPERIMENT = "ad-platform-steering"


class MlflowTracking(ConfigurableResource):
    """Where MLflow runs, artifacts and registered models live."""

    tracking_uri: str = Field(description="sqlite:///... (embedded default) or postgresql://... (production).")
    registry_uri: str | None = Field(default=None, description="Model registry store; default: the tracking store.")
    artifact_location: str | None = Field(
        default=None,
        description="Artifact root of experiments this resource creates: a local folder URI or s3://bucket/prefix.",
    )
    experiment_name: str = DEFAULT_EXPERIMENT

    def activate(self) -> None:
        """Point MLflow's process-global fluent API at this store."""
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri or self.tracking_uri)

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri or self.tracking_uri)

    def experiment_id(self, name: str | None = None) -> str:
        name = name or self.experiment_name
        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return client.create_experiment(name, artifact_location=self.artifact_location)

    @contextlib.contextmanager
    def run(
        self, run_name: str, tags: dict[str, str] | None = None, *, nested: bool = False, experiment: str | None = None
    ) -> Iterator[mlflow.ActiveRun]:
        """One MLflow run that is always ended (FINISHED / FAILED / KILLED); ``nested`` runs sit under the
        active one (hyper-parameter trials under their search)."""
        self.activate()
        experiment_id = self.experiment_id(experiment)
        active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags, nested=nested)
        status = RunStatus.to_string(RunStatus.FAILED)
        try:
            yield active
            status = RunStatus.to_string(RunStatus.FINISHED)
        except KeyboardInterrupt:
            status = RunStatus.to_string(RunStatus.KILLED)
            raise
        finally:
            # end_run ends the innermost active run: this one (a nested trial ends before its parent).
            mlflow.end_run(status=status)


def local_tracking(state_dir: Path) -> MlflowTracking:
    """The embedded default: ``<state>/mlflow/mlflow.db`` and ``<state>/mlflow/artifacts``."""
    root = Path(state_dir) / "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    return MlflowTracking(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_location=(root / "artifacts").as_uri()
    )


def tracking_from_env(state_dir: Path, *, in_definitions: bool = False) -> MlflowTracking:
    """``AD_MLFLOW_TRACKING_URI`` (e.g. postgresql://user:pass@host/mlflow) and ``AD_MLFLOW_ARTIFACTS`` (e.g.
    s3://ad-platform-models/mlflow) when set; the embedded default otherwise.

    ``in_definitions``: the URI (it holds the database password) is an ``EnvVar``, never shown in the UI. Only
    Dagster resolves an ``EnvVar``; the CLI takes the plain value.
    """
    uri = os.environ.get("AD_MLFLOW_TRACKING_URI")
    if not uri:
        return local_tracking(state_dir)
    return MlflowTracking(
        tracking_uri=EnvVar("AD_MLFLOW_TRACKING_URI") if in_definitions else uri,
        registry_uri=os.environ.get("AD_MLFLOW_REGISTRY_URI") or None,
        artifact_location=os.environ.get("AD_MLFLOW_ARTIFACTS") or None,
    )
