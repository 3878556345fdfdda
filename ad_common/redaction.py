"""Redaction of secrets in log lines and error messages (webhook URLs, credentials, signed URLs).

One function for every layer: the JSON log formatter (``ad_platform/json_logging.py``) applies it to each line,
the alert webhook (``ad_resources/alerts.py``) to every error it reports.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

REDACTED = "***"
# Environment variables whose values never appear in a log line, wherever they are quoted.
SECRET_ENV_VARS = ("AD_ALERT_WEBHOOK_URL", "DAGSTER_PG_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
# http(s) paths and queries carry webhook tokens (Slack /services/T../B../xxx) and presigned signatures.
_HTTP_PATH = re.compile(r"\b(https?://[^/\s?#'\"]+)[/?#][^\s'\"]*")
# urllib3/requests quote only the path of the URL: "Max retries exceeded with url: /services/T0/B0/x?token=..."
_REQUESTS_URL = re.compile(r"(with url: )[^\s'\"()]+")
_SECRET_PAIR = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|signature)(\s*[=:]\s*)[^\s,;&'\"]+"
)


def secret_parts(url: str) -> list[str]:
    """The parts of a URL that are secret on their own: user info, path, query, fragment (not the host)."""
    parts = urlsplit(url)
    candidates = [url, parts.path, parts.query, parts.fragment, parts.username or "", parts.password or ""]
    if parts.path and parts.query:
        candidates.append(f"{parts.path}?{parts.query}")
    # longest first, so a path+query is replaced whole before its pieces
    return sorted({c for c in candidates if len(c) >= 4 and c != "/"}, key=len, reverse=True)


def redact(text: str, *secrets: str) -> str:
    """``text`` without credentials: ``secrets`` and secret env values (and, for URLs, their path and query),
    URL user:password, http(s) paths/queries, requests' ``with url: <path>``, ``key=value`` pairs."""
    values = [*secrets, *(os.environ.get(name) or "" for name in SECRET_ENV_VARS)]
    for value in values:
        if len(value) < 4:
            continue
        for part in secret_parts(value) if "://" in value else [value]:
            text = text.replace(part, REDACTED)
    text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    text = _HTTP_PATH.sub(rf"\1/{REDACTED}", text)
    text = _REQUESTS_URL.sub(rf"\1{REDACTED}", text)
    return _SECRET_PAIR.sub(rf"\1\2{REDACTED}", text)
