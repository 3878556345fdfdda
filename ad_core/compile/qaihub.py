"""Qualcomm AI Hub (Snapdragon Ride): compile the ONNX engine for a device and profile it there, through the
``qai_hub`` client (``submit_compile_job``, ``submit_profile_job``, then the compiled model and the profile are
downloaded).

The API token comes from the client's own configuration (``~/.qai_hub/client.ini`` or the file named by
``QAIHUB_CLIENT_INI``: ``qai-hub configure --api_token ...``) or from ``QAIHUB_API_TOKEN`` (a Kubernetes secret
exposed to the compile pod as an environment variable); it is never in the repository. Without one,
:func:`client_config` raises :class:`NoToken` before any request: the client itself would retry its first
call for ~45 s and then fail with a less specific message.

Only tested against a loopback stand-in of the REST API (``tests/support/aihub_standin.py``); the real service
was not reached from these machines.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TOKEN_ENV = "QAIHUB_API_TOKEN"
DEFAULT_API_URL = "https://workbench.aihub.qualcomm.com"
DEFAULT_DEVICE = "SA8775P ADP"  # Snapdragon Ride platform (automotive) on AI Hub


class NoToken(RuntimeError):
    """No AI Hub API token in the environment or the client's configuration."""


def device_slug(device: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")


def _ini_token() -> tuple[str | None, str | None, Path]:
    from qai_hub.api_utils import get_config_path

    path = Path(get_config_path())
    if not path.is_file():
        return None, None, path
    parser = configparser.ConfigParser()
    parser.read(path)
    if "api" not in parser:
        return None, None, path
    api = parser["api"]
    return api.get("api_token") or None, api.get("api_url") or None, path


def client_config(api_url: str = DEFAULT_API_URL) -> Any:
    """A ``qai_hub.ClientConfig`` with the token from ``QAIHUB_API_TOKEN`` or the client's ini file."""
    from qai_hub.public_rest_api import ClientConfig

    token = os.environ.get(TOKEN_ENV, "").strip()
    ini_url = None
    if not token:
        ini, ini_url, path = _ini_token()
        if not ini:
            raise NoToken(
                f"no Qualcomm AI Hub API token: set {TOKEN_ENV} (in Kubernetes: a secret exposed to the compile pod "
                f"as that variable) or configure the client (qai-hub configure --api_token TOKEN writes {path}). "
                "Nothing was sent to AI Hub."
            )
        token = ini
    url = api_url if api_url != DEFAULT_API_URL or not ini_url else ini_url
    return ClientConfig(api_token=token, api_url=url, web_url=url, verbose=False)


@dataclass(frozen=True)
class HubResult:
    path: Path
    sha256: str
    size_bytes: int
    device: str
    compile_job_id: str
    profile_job_id: str
    api_url: str
    inference_ms: float | None
    peak_memory_mib: float | None
    profile: dict[str, Any] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out.pop("profile")
        return out


def compile_and_profile(
    config: Any,
    onnx_path: Path,
    out_dir: Path,
    *,
    device: str,
    input_shape: tuple[int, ...],
    input_name: str = "frames",
    target_runtime: str = "qnn_context_binary",
    timeout_s: int = 3600,
    log: Callable[[str], None] = print,
) -> HubResult:
    """Compile ``onnx_path`` for ``device``, profile the compiled model on it and download both."""
    import qai_hub

    client = qai_hub.Client(config=config)
    hub_device = qai_hub.Device(device)
    compile_job = client.submit_compile_job(
        model=str(onnx_path),
        device=hub_device,
        name=f"steering-{onnx_path.parent.name[:12]}",
        input_specs={input_name: (tuple(input_shape), "float32")},
        options=f"--target_runtime {target_runtime}",
    )
    log(f"AI Hub compile job {compile_job.job_id} for {device} at {config.api_url}")
    status = compile_job.wait(timeout=timeout_s)
    if not status.success:
        raise RuntimeError(f"AI Hub compile job {compile_job.job_id} failed: {status.message}")
    target = compile_job.get_target_model()
    if target is None:
        raise RuntimeError(f"AI Hub compile job {compile_job.job_id} produced no model")
    out_dir.mkdir(parents=True, exist_ok=True)
    downloaded = Path(compile_job.download_target_model(str(out_dir / "compiled")))
    profile_job = client.submit_profile_job(model=target, device=hub_device, name=f"profile-{compile_job.job_id}")
    log(f"AI Hub profile job {profile_job.job_id} on {device}")
    status = profile_job.wait(timeout=timeout_s)
    if not status.success:
        raise RuntimeError(f"AI Hub profile job {profile_job.job_id} failed: {status.message}")
    profile = profile_job.download_profile()
    summary = profile.get("execution_summary", {})
    us = summary.get("estimated_inference_time")
    peak = summary.get("estimated_inference_peak_memory")
    data = downloaded.read_bytes()
    return HubResult(
        path=downloaded,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        device=device,
        compile_job_id=compile_job.job_id,
        profile_job_id=profile_job.job_id,
        api_url=config.api_url,
        inference_ms=None if us is None else us / 1000.0,
        peak_memory_mib=None if peak is None else peak / 2**20,
        profile=profile,
    )
