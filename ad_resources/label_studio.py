"""Label Studio, the review platform (docs/review.md): a small typed client of its REST API and the resource.

``label-studio-sdk`` does not resolve with the platform's pins (its opencv needs numpy<2.3), and the few calls
the review loop needs (projects, task import, tasks, annotations, users) are stable REST endpoints, so this is
a thin client over ``requests``.

Tokens: a personal access token (Label Studio's default, a JWT refresh token) is exchanged at
``/api/token/refresh/`` for short-lived access tokens (``Bearer``); any other token is a legacy token
(``Token <key>``). Production servers should hand out personal access tokens (revocable, per user); the
embedded local server uses a legacy token because it can be set at the server's first start
(``--user-token``), without a browser step.

The embedded default (no URL configured) starts Label Studio from ``.venv-review`` (``make review-venv``) under
``$AD_STATE_DIR/label-studio/`` with SQLite, bound to 127.0.0.1, and reuses it while it runs.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from dagster import ConfigurableResource
from pydantic import Field

from ad_common import settings
from ad_common.atomic import write_bytes_atomic

LABEL_STUDIO_VERSION = "1.23.2"
REVIEW_VENV = settings.REPO_ROOT / ".venv-review"
LOCAL_USER = "reviewer@ad-platform.local"
START_TIMEOUT_S = 420.0
_PAGE = 100
# Offline and quiet: no version check against PyPI, no analytics, no Sentry.
_OFFLINE_ENV = {
    "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
    "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
    "LABEL_STUDIO_SENTRY_DSN": "",
    "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
}


class LabelStudioError(RuntimeError):
    """The server answered, but not as expected (status and body in the message)."""


class LabelStudioUnreachable(LabelStudioError):
    """No answer from the server; nothing was read or written."""


@dataclass(frozen=True)
class Project:
    id: int
    title: str


@dataclass(frozen=True)
class Annotation:
    id: int
    completed_by: int | None
    updated_at: str
    was_cancelled: bool
    result: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Task:
    id: int
    data: dict[str, Any]
    annotations: tuple[Annotation, ...] = ()


def _is_personal_access_token(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2


class LabelStudioClient:
    def __init__(self, url: str, token: str, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s
        self._session = requests.Session()
        self._access: str | None = None

    def _auth(self, refresh: bool = False) -> str:
        if not _is_personal_access_token(self._token):
            return f"Token {self._token}"
        if self._access is None or refresh:
            body = self._send("POST", "/api/token/refresh/", json={"refresh": self._token}, auth=None)
            self._access = str(body["access"])
        return f"Bearer {self._access}"

    def _send(self, method: str, path: str, auth: str | None, **kwargs: Any) -> Any:
        headers = {"Authorization": auth} if auth else {}
        try:
            response = self._session.request(
                method, f"{self.url}{path}", headers=headers, timeout=self._timeout_s, **kwargs
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise LabelStudioUnreachable(
                f"Label Studio at {self.url} is unreachable ({type(exc).__name__}); nothing was read or changed. "
                "Start the local server with `make review`, or point AD_LABEL_STUDIO_URL at your team's server."
            ) from None
        if response.status_code == 401 and auth and auth.startswith("Bearer"):
            return None  # the access token expired: the caller refreshes once
        if response.status_code >= 400:
            raise LabelStudioError(f"{method} {self.url}{path}: HTTP {response.status_code}: {response.text[:300]}")
        return response.json() if response.content else None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        body = self._send(method, path, self._auth(), **kwargs)
        if body is None and _is_personal_access_token(self._token):
            body = self._send(method, path, self._auth(refresh=True), **kwargs)
        return body

    def whoami(self) -> str:
        return str(self.request("GET", "/api/current-user/whoami")["email"])

    def users(self) -> dict[int, str]:
        """User id -> e-mail (annotations name their reviewer by id)."""
        return {int(u["id"]): str(u["email"]) for u in self.request("GET", "/api/users/")}

    def project_by_title(self, title: str) -> Project | None:
        page = 1
        while True:
            body = self.request("GET", "/api/projects/", params={"title": title, "page": page, "page_size": _PAGE})
            for p in body["results"]:
                if p["title"] == title:
                    return Project(int(p["id"]), p["title"])
            if not body.get("next"):
                return None
            page += 1

    def create_project(self, title: str, description: str, label_config: str) -> Project:
        body = self.request(
            "POST", "/api/projects/", json={"title": title, "description": description, "label_config": label_config}
        )
        return Project(int(body["id"]), body["title"])

    def tasks(self, project_id: int) -> list[Task]:
        """Every task of the project with its annotations (paged)."""
        out: list[Task] = []
        page = 1
        while True:
            body = self.request(
                "GET", "/api/tasks/", params={"project": project_id, "page": page, "page_size": _PAGE, "fields": "all"}
            )
            out += [_task(t) for t in body["tasks"]]
            if len(out) >= int(body["total"]) or not body["tasks"]:
                return out
            page += 1

    def import_tasks(self, project_id: int, data: list[dict[str, Any]]) -> int:
        if not data:
            return 0
        body = self.request("POST", f"/api/projects/{project_id}/import", json=[{"data": d} for d in data])
        return int(body["task_count"])

    def annotate(self, task_id: int, result: list[dict[str, Any]]) -> int:
        """Submit an annotation as the token's user (what a reviewer's "Submit" does)."""
        return int(self.request("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result})["id"])


def _task(raw: dict[str, Any]) -> Task:
    annotations = tuple(
        Annotation(
            id=int(a["id"]),
            completed_by=a.get("completed_by"),
            updated_at=str(a.get("updated_at") or a.get("created_at") or ""),
            was_cancelled=bool(a.get("was_cancelled")),
            result=tuple(a.get("result") or ()),
        )
        for a in raw.get("annotations") or ()
    )
    return Task(int(raw["id"]), dict(raw.get("data") or {}), annotations)


@dataclass(frozen=True)
class LocalServer:
    url: str
    token: str
    username: str
    password: str
    pid: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class LocalLabelStudio:
    """The embedded server: ``<home>/data`` (SQLite, media), ``server.json`` (URL, pid, credentials), ``server.log``."""

    def __init__(self, home: Path, venv: Path = REVIEW_VENV) -> None:
        self.home = home
        self.binary = venv / "bin" / "label-studio"
        self.state_file = home / "server.json"

    def running(self) -> LocalServer | None:
        if not self.state_file.is_file():
            return None
        server = LocalServer(**json.loads(self.state_file.read_text()))
        return server if server.pid and _alive(server.pid) and _healthy(server.url) else None

    def ensure_running(self, log: Any = print) -> LocalServer:
        """The running server, or a new one (the first start creates the reviewer and its token)."""
        return self.running() or self.launch(log).wait()

    def launch(self, log: Any = print) -> Launch:
        """Start the server without waiting for it (callers overlap its ~2 min start with other work)."""
        if not self.binary.is_file():
            raise LabelStudioUnreachable(
                f"no local Label Studio: {self.binary} is missing; run `make review-venv` (label-studio=="
                f"{LABEL_STUDIO_VERSION} in its own venv), or point AD_LABEL_STUDIO_URL at your team's server"
            )
        previous = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        token = previous.get("token") or secrets.token_hex(20)
        password = previous.get("password") or secrets.token_urlsafe(12)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        command = [
            str(self.binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(self.home / "data"), "--username", LOCAL_USER, f"--password={password}",
            "--user-token", token, "--enable-legacy-api-token",
        ]  # fmt: skip
        env = {**os.environ, **_OFFLINE_ENV, "LABEL_STUDIO_BASE_DATA_DIR": str(self.home / "data")}
        log(f"starting Label Studio {LABEL_STUDIO_VERSION} on {url} (log: {self.home / 'server.log'})")
        with open(self.home / "server.log", "ab") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.home
            )
        return Launch(self, process, LocalServer(url, token, LOCAL_USER, password, process.pid), log)

    def stop(self) -> bool:
        server = self.running()
        if server is None:
            return False
        os.killpg(server.pid, signal.SIGTERM)
        return True


@dataclass
class Launch:
    """A local server that was started; :meth:`wait` returns it once ``/health`` answers."""

    home: LocalLabelStudio
    process: subprocess.Popen[bytes]
    server: LocalServer
    log: Any
    started: float = field(default_factory=time.monotonic)

    def wait(self) -> LocalServer:
        while not _healthy(self.server.url):
            if self.process.poll() is not None or time.monotonic() - self.started > START_TIMEOUT_S:
                if self.process.poll() is None:
                    os.killpg(self.process.pid, signal.SIGTERM)
                tail = (self.home.home / "server.log").read_text(errors="replace")[-1500:]
                raise LabelStudioUnreachable(f"Label Studio did not start on {self.server.url}; its log ends:\n{tail}")
            time.sleep(1.0)
        write_bytes_atomic(self.home.state_file, json.dumps(self.server.__dict__, indent=1).encode())
        self.home.state_file.chmod(0o600)
        self.log(f"Label Studio up after {time.monotonic() - self.started:.0f} s")
        return self.server


def local_home() -> Path:
    return settings.state_dir() / "label-studio"


class LabelStudioResource(ConfigurableResource):
    """Where review projects live. ``url`` empty: the embedded local server (started on first use)."""

    url: str = Field(default="", description="Label Studio base URL; empty: the local server under .state/.")
    token: str = Field(default="", description="Personal access token or legacy API token (a secret: use EnvVar).")
    timeout_s: float = Field(default=60.0)

    def client(self, log: Any = print) -> LabelStudioClient:
        if self.url:
            if not self.token:
                raise LabelStudioError(f"Label Studio at {self.url}: no token (set AD_LABEL_STUDIO_TOKEN)")
            return LabelStudioClient(self.url, self.token, self.timeout_s)
        server = LocalLabelStudio(local_home()).ensure_running(log)
        return LabelStudioClient(server.url, server.token, self.timeout_s)

    def client_if_running(self) -> LabelStudioClient | None:
        """For polling: a configured server's client, or the local server's if it runs (never starts one)."""
        if self.url:
            return self.client()
        server = LocalLabelStudio(local_home()).running()
        return LabelStudioClient(server.url, server.token, self.timeout_s) if server else None
