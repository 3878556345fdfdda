"""Alert delivery: a JSON POST to a webhook (Slack/Teams relay, PagerDuty bridge, ...), or only a log line.

The alert sensor (``ad_sensors/alerts.py``) decides *what* to alert; this resource only delivers. Every alert
is logged whether or not a webhook is configured, so a missing or broken webhook never hides a failure.
The URL is a secret (Slack/Teams URLs carry their token in the path): no error or log line quotes it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import requests
from dagster import ConfigurableResource, get_dagster_logger
from pydantic import Field

from ad_common.redaction import redact

# Worth retrying: the receiver is overloaded or restarting. Other 4xx mean the request itself is wrong.
_RETRYABLE_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Alert:
    """One thing a person should look at. ``asset_key`` is ``"de/decoded_signals"`` style."""

    asset_key: str | None
    partition: str | None
    check: str | None
    severity: str  # ERROR | WARN
    summary: str
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AlertWebhook(ConfigurableResource):
    """POSTs each alert as JSON to ``url`` with bounded retries; with ``url`` unset it only logs."""

    url: str | None = Field(default=None, description="Webhook URL; None logs alerts without sending them.")
    timeout_s: float = Field(default=5.0, description="Timeout of one POST attempt.")
    max_attempts: int = Field(default=3, description="POST attempts per alert before it is reported undelivered.")
    backoff_s: float = Field(default=0.5, description="Wait before the 2nd attempt; doubles for each further one.")
    ui_base_url: str = Field(default="http://127.0.0.1:3000", description="Dagster UI, for links to runs.")

    def run_url(self, run_id: str | None) -> str | None:
        return f"{self.ui_base_url.rstrip('/')}/runs/{run_id}" if run_id else None

    def payload(self, alert: Alert) -> dict[str, Any]:
        return {**alert.to_dict(), "run_url": self.run_url(alert.run_id)}

    def send(self, alert: Alert) -> bool:
        """Log the alert and POST it; False when the webhook did not accept it (the caller keeps it for later)."""
        log = get_dagster_logger("ad_platform.alerts")
        body = self.payload(alert)
        log_line = (
            f"ALERT {alert.severity} {alert.asset_key or '-'}[{alert.partition or '-'}] "
            f"{alert.check or 'run'}: {alert.summary} {body['run_url'] or ''}"
        )
        (log.error if alert.severity == "ERROR" else log.warning)(log_line)
        if not self.url:
            return True
        reason, attempts = "", max(1, self.max_attempts)
        for attempt in range(1, attempts + 1):
            try:
                response = requests.post(self.url, json=body, timeout=self.timeout_s)
            except requests.RequestException as exc:
                # requests quotes the URL's path and query (the webhook's secret) in its messages
                reason = redact(f"{type(exc).__name__}: {exc}", self.url)
            else:
                if response.status_code < 300:
                    return True
                reason = redact(f"HTTP {response.status_code}: {response.text[:200]}", self.url)
                if response.status_code < 500 and response.status_code not in _RETRYABLE_STATUS:
                    break
            if attempt < attempts:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        log.error(f"alert webhook did not accept the alert after {attempt} attempt(s) ({reason}): {log_line}")
        return False
