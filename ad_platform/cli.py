"""Command line of the platform: `python -m ad_platform COMMAND` (run-once, demo, review, metrics, approve, rollback,
models, lineage, decode)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import DagsterInstance, Definitions, ExecuteInProcessResult

from ad_common import settings
from ad_common.stages import CURATED_SPLITS, METADATA_CATALOG_JOB, SIGNAL_DRIFT, SPLIT_REVIEW
from ad_platform.instance import local_instance
from ad_resources.catalog import CATALOG_VIEWS

if TYPE_CHECKING:  # the CLI imports MLflow and the registry only in the commands that use them
    from mlflow.tracking import MlflowClient

    from ad_core.train.registry import AuditRecord

EXIT_BUSY = 75  # EX_TEMPFAIL: another run-once holds the lock; try again later


def cmd_run_once(args: argparse.Namespace) -> int:
    from ad_platform.definitions import defs
    from ad_platform.runner import RunOnceBusy, outcomes_json, run_once

    try:
        outcomes = run_once(
            defs,
            local_instance,
            log=lambda line: print(line, file=sys.stderr),
            settle_s=args.settle_s,
            wait_for_lock=args.wait,
        )
    except RunOnceBusy as busy:
        print(busy, file=sys.stderr)
        print(outcomes_json([]))
        return EXIT_BUSY
    print(outcomes_json(outcomes))
    return 1 if args.strict and any(o.status == "failed" for o in outcomes) else 0


def _land_bad_examples(landing: Path, market: str, index: int, minutes: float, seed: int) -> dict[str, str]:
    """Two deliberately bad drives, so the demo shows what the platform does with them."""
    from fleetgen import generate_drive

    corrupt = landing / market / f"{market}-demo-corrupt-log"
    corrupt.mkdir(parents=True, exist_ok=True)
    # What a clone without Git LFS leaves behind: a pointer text where the log should be.
    (corrupt / "recording.mcap").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1048576\n")
    dropout = generate_drive(landing, market, index, minutes, seed=seed, faults=("gnss_dropout",))
    return {
        corrupt.name: f"a Git LFS pointer saved as .mcap: quarantined to {landing / '_quarantine'}",
        dropout.name: "a GNSS dropout: the blocking no_gaps check stops it before synced_frames",
    }


def cmd_demo(args: argparse.Namespace) -> int:
    from ad_platform.definitions import defs
    from ad_platform.runner import refresh_market_assets, run_once, send_alerts_once, train_models_once
    from ad_resources.landing import LocalLandingZone
    from fleetgen import generate_fleet

    landing = settings.landing_dir()
    markets = [m.strip() for m in args.markets.split(",") if m.strip()]
    started = time.monotonic()
    print(f"generating {args.drives} drive(s) x {len(markets)} market(s) x {args.minutes} min into {landing}")
    generate_fleet(landing, markets, args.drives, args.minutes, seed=args.seed)
    expected_failures = (
        _land_bad_examples(landing, markets[0], args.drives, args.minutes, args.seed) if args.with_bad_drives else {}
    )
    generated = time.monotonic() - started
    instance = local_instance()
    # settle_s=0: the demo wrote the fleet itself, every drive is complete
    outcomes = run_once(defs, instance, log=lambda line: print(f"  {line}"), console_log_level="CRITICAL", settle_s=0)
    print("  market assets (signal drift per market)")
    # The demo's markets hold a handful of drives: half of them form the reference, the rest are compared.
    drift_run = refresh_market_assets(
        defs,
        instance,
        console_log_level="CRITICAL",
        reference_drives=max(1, args.drives // 2),
        markets=tuple(markets),
    )
    drift_ok = drift_run.success
    print("  metadata catalog (dbt build of dbt_metadata/)")
    catalog_run = defs.resolve_job_def(METADATA_CATALOG_JOB.name).execute_in_process(
        instance=instance, raise_on_error=False, run_config=_quiet()
    )
    print("  trained models (per market, on its latest curated splits)")
    trained = train_models_once(defs, instance, markets, console_log_level="CRITICAL", training={"epochs": args.epochs})
    print("\nalerts (logged; set AD_ALERT_WEBHOOK_URL to POST them):")
    send_alerts_once(defs, instance)
    total = time.monotonic() - started

    drives = [d for d in LocalLandingZone(root=str(landing)).list_drives(markets) if not d.drive_id.startswith(".")]
    per_market = Counter(d.market for d in drives)
    print("\nfleet in the landing zone:")
    for market in markets:
        size = sum(d.total_bytes for d in drives if d.market == market)
        print(f"  {market.upper()}: {per_market[market]} drive(s), {size / 1e6:.1f} MB")
    failed = [o for o in outcomes if o.status == "failed"]
    print(
        f"\n{len(outcomes) - len(failed)} drive run(s) materialized, {len(failed)} failed "
        f"(generation {generated:.0f} s, total {total:.0f} s)"
    )
    for o in failed:
        why = f"  [expected: {expected_failures[o.drive_id]}]" if o.drive_id in expected_failures else ""
        print(f"  FAILED {o.market}/{o.drive_id}: {' '.join((o.error or '').split())}{why}")
    _print_catalog_summary()
    _print_drift_summary(drift_run)
    _print_splits_summary(drift_run)
    _print_metadata_catalog_summary(catalog_run)
    _print_metrics_summary(defs, instance)
    _print_models_summary(trained)
    engines_ok = _demo_engines(defs, instance, markets, trained)
    print(
        f"\nlake: {settings.lake_dir()}\n"
        f"catalog: duckdb {settings.catalog_path()}  (views: {', '.join(CATALOG_VIEWS)})\n"
        f"metadata catalog (dbt models, docs/catalog.md): duckdb -readonly {settings.metadata_catalog_path()}\n"
        "UI: run `make dev` and open http://127.0.0.1:3000 (asset checks and failed runs are under each asset)\n"
        f"recordings (MCAP, open in Foxglove or Lichtblick): {settings.lake_dir() / 'recordings'}/<market>/<drive>/\n"
        "review: run `make review`: it starts Label Studio on 127.0.0.1 and pushes each market's split as a review "
        "project; verdicts flow back with `python -m ad_platform review --poll` (or the review_verdicts_sensor under "
        "`make dev`) into the next split version (docs/review.md)"
    )
    unexpected = [o for o in failed if o.drive_id not in expected_failures]
    if not drift_ok:
        print("  FAILED market assets run (see the UI)")
    if not catalog_run.success:
        print("  FAILED metadata catalog run (a dbt model or test failed; see the UI)")
    return 1 if unexpected or not drift_ok or not catalog_run.success or not engines_ok else 0


def cmd_review(args: argparse.Namespace) -> int:
    """Start the local Label Studio (unless AD_LABEL_STUDIO_URL names a server), push or poll the review projects."""
    import os

    from ad_common.lake_layout import review_project_path, split_manifest_path
    from ad_common.stages import REVIEW_JOB, REVIEW_PROJECT, REVIEW_VERDICTS_STAGE
    from ad_platform.definitions import defs
    from ad_resources.label_studio import LabelStudioError, LocalLabelStudio, local_home

    local = LocalLabelStudio(local_home())
    if args.stop:
        print("stopped the local Label Studio" if local.stop() else "the local Label Studio is not running")
        return 0
    try:
        server = None if os.environ.get("AD_LABEL_STUDIO_URL") else local.ensure_running()
    except LabelStudioError as exc:
        print(f"review: {exc}", file=sys.stderr)
        return 1
    lake = defs.resources["lake"]
    stage, needs = (REVIEW_VERDICTS_STAGE, review_project_path) if args.poll else (REVIEW_PROJECT, split_manifest_path)
    markets = [m for m in args.markets.split(",") if m and lake.exists(needs(m, args.split_version))]
    if not markets:
        print(
            f"review: no market has {'a review project' if args.poll else 'a curated split'} {args.split_version} "
            "yet (run `make demo` first)",
            file=sys.stderr,
        )
        return 1
    started = time.monotonic()
    run = defs.resolve_job_def(REVIEW_JOB.name).execute_in_process(
        instance=local_instance(),
        raise_on_error=False,
        asset_selection=[stage.key(m) for m in markets],
        run_config={
            **_quiet(),
            **(
                {}
                if args.poll
                else {
                    "ops": {
                        REVIEW_PROJECT.key(m).to_python_identifier(): {"config": {"split_version": args.split_version}}
                        for m in markets
                    }
                }
            ),
        },
    )
    for event in run.get_asset_materialization_events():
        meta = {k: v.value for k, v in event.materialization.metadata.items()}
        market = event.asset_key.path[0].upper()
        if args.poll:
            print(f"  {market}: {meta['dagster/row_count']} verdict(s), {meta['rejected']} rejection(s)")
        else:
            print(f"  {market}: {meta['tasks']} task(s) ({meta['tasks_pushed']} new) {meta['project_url']}")
    print(f"{'polled' if args.poll else 'pushed'} in {time.monotonic() - started:.1f} s")
    if server is not None:
        print(
            f"log in at {server.url} as {server.username} / {server.password} "
            "(stop: python -m ad_platform review --stop)"
        )
    if not run.success:
        print("review: FAILED (see the errors above or the UI)", file=sys.stderr)
    return 0 if run.success else 1


def _quiet() -> dict[str, object]:
    return {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def _print_metadata_catalog_summary(run: ExecuteInProcessResult) -> None:
    """The dbt models' row counts and the dbt tests' outcome (asset checks of the catalog/<model> assets)."""
    from ad_resources.s3 import resources_from_env

    checks = run.get_asset_check_evaluations()
    failed = sorted(f"{e.asset_key.path[-1]}.{e.check_name}" for e in checks if not e.passed)
    print(f"\nmetadata catalog (dbt): {len(checks) - len(failed)}/{len(checks)} dbt tests passed {failed or ''}")
    if not run.success and not checks:
        return
    metadata = resources_from_env()["metadata_catalog"]
    for model in ("drives", "streams", "drive_qa_status", "split_assignments", "split_summary"):
        print(f"  {model}: {metadata.query(f'select count(*) from {model}')[0][0]} rows")
    for market, status, drives in metadata.query(
        "select market, qa_status, count(*) from drive_qa_status group by all order by all"
    ):
        print(f"  {market.upper()} QA {status}: {drives} drive(s)")


# The demo trains small so `make demo` stays short: 5 epochs over the market's training shards, 1 rank (3 left DE
# at 0.57 x its baseline). docs/models.md has the full-size figures, docs/training-at-scale.md the multi-rank ones.
DEMO_EPOCHS = 5


# ---- demo step: compiled engines (issue 14) -------------------------------------------------------------------
DEMO_APPROVER = "demo"


def _demo_engines(
    defs: Definitions, instance: DagsterInstance, markets: list[str], trained: dict[str, ExecuteInProcessResult | str]
) -> bool:
    """Approve each market's fresh candidate as the `demo` approver (the registry's approve function, audited like
    a human approval), build its ONNX engine with the parity report and print the engine's lineage."""
    from ad_core.train.registry import APPROVED, CANDIDATE, GateRefused, alias_version, approve, model_name
    from ad_platform.runner import compile_onnx_once

    print("\ncompiled engines (the demo approves each candidate as approver 'demo'; in production a person does):")
    client, lake = _registry()
    to_compile = []
    for market in markets:
        outcome = trained.get(market)
        name = model_name(market)
        candidate = alias_version(client, name, CANDIDATE)  # type: ignore[arg-type]
        if isinstance(outcome, str) or outcome is None or candidate is None:
            why = outcome if isinstance(outcome, str) else "none"
            print(f"  {market.upper()}: skipped: no candidate model ({why})")
            continue
        approved = alias_version(client, name, APPROVED)  # type: ignore[arg-type]
        if approved is None or str(approved.version) != str(candidate.version):
            try:
                note = "demo: approved by make demo"
                record = approve(client, name, str(candidate.version), DEMO_APPROVER, note)  # type: ignore[arg-type]
            except GateRefused as exc:
                print(f"  {market.upper()}: not approved: {exc}")
                continue
            _write_audit(lake, record)
            print(f"  {market.upper()}: {name} version {record.version} approved by '{DEMO_APPROVER}'")
        to_compile.append(market)
    ok = True
    for market, result in compile_onnx_once(defs, instance, to_compile, console_log_level="CRITICAL").items():
        ok = _print_engine(market, result) and ok
    return ok


def _print_engine(market: str, result: ExecuteInProcessResult) -> bool:
    from ad_platform import lineage

    events = result.get_asset_materialization_events()
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    if not events:
        errors = [e.event_specific_data.error.message for e in result.get_step_failure_events()]  # type: ignore[union-attr]
        print(f"  {market.upper()}: ONNX engine FAILED: {' '.join(' '.join(errors).split())[:300]}")
        return False
    meta = events[0].materialization.metadata
    print(
        f"  {market.upper()}: onnx-cpu engine {meta['engine_sha256'].value} ({meta['size_bytes'].value / 1e6:.2f} MB, "
        f"reproducible export: {meta['reproducible_export'].value}) from {meta['model'].value}"
    )
    print(
        f"    parity vs torch on {meta['parity_frames'].value} test frames at batch {meta['parity_batch_size'].value}: "
        f"max |diff| {meta['parity_max_abs_diff'].value:.2e} deg, mean {meta['parity_mean_abs_diff'].value:.2e} deg, "
        f"MAE {meta['mae_onnxruntime'].value:.4f} (onnxruntime) vs {meta['mae_torch'].value:.4f} (torch) deg"
    )
    for name, check in checks.items():
        print(f"    check {name}: {'passed' if check.passed else 'FAILED'}")
    print(
        f"    CPU latency (onnxruntime, batch 1): p50 {meta['latency_p50_ms'].value:.2f} ms, "
        f"p99 {meta['latency_p99_ms'].value:.2f} ms"
    )
    client, lake = _registry()
    from ad_resources.s3 import resources_from_env

    lin = lineage.resolve(str(meta["engine_sha256"].value), client, lake, resources_from_env()["catalog"])  # type: ignore[arg-type]
    print(f"\nlineage of the {market.upper()} engine (python -m ad_platform lineage {meta['engine_sha256'].value}):")
    print(lineage.render(lin))
    return result.success and lin.ok


def cmd_lineage(args: argparse.Namespace) -> int:
    """The chain from an engine (or model version) down to the raw files; exit 1 when broken or flagged."""
    from ad_platform import lineage
    from ad_resources.s3 import resources_from_env

    client, lake = _registry()
    try:
        lin = lineage.resolve(args.ref, client, lake, resources_from_env()["catalog"])  # type: ignore[arg-type]
    except lineage.LineageError as exc:
        print(f"lineage: {exc}", file=sys.stderr)
        return 2
    print(lineage.render(lin))
    return 0 if lin.ok else 1


def _print_catalog_summary() -> None:
    """Query the DuckDB catalog once: this also (re)creates its views, so the printed path is ready to open."""
    from ad_resources.s3 import resources_from_env

    rows = resources_from_env()["catalog"].query(
        "SELECT market, count(DISTINCT drive_id), count(*), sum(rows) FROM decoded_streams GROUP BY market ORDER BY 1"
    )
    print("\ndecoded in the catalog:")
    for market, drives, streams, total_rows in rows:
        print(f"  {market.upper()}: {drives} drive(s), {streams} stream tables, {total_rows:,} rows")


def _print_drift_summary(run: ExecuteInProcessResult) -> None:
    print("\nsignal drift per market:")
    checks = {e.asset_key: e for e in run.get_asset_check_evaluations()} if run.success else {}
    for event in run.get_asset_materialization_events():
        key, metadata = event.asset_key, event.materialization.metadata
        if key.path[-1] != SIGNAL_DRIFT.name:
            continue
        check = checks.get(key)
        verdict = (check.description or check.metadata["status"].value) if check else "no check result"
        print(
            f"  {key.path[0].upper()}: compared {metadata['new_drives'].value} new drive(s) against "
            f"{metadata['reference_drives'].value} reference drive(s): {verdict}"
        )


def _print_splits_summary(run: ExecuteInProcessResult) -> None:
    print("\ncurated splits per market (drives / kept frames; checks):")
    checks: dict[str, list[str]] = {}
    for e in run.get_asset_check_evaluations():
        if e.asset_key.path[-1] == CURATED_SPLITS.name:
            checks.setdefault(e.asset_key.path[0], []).append(f"{e.check_name} {'ok' if e.passed else 'FAILED'}")
    for event in run.get_asset_materialization_events():
        key, metadata = event.asset_key, event.materialization.metadata
        if key.path[-1] == SPLIT_REVIEW.name:
            print(f"  {key.path[0].upper()} review page: {metadata['review_page'].value}")
        if key.path[-1] != CURATED_SPLITS.name:
            continue
        counts = metadata["split_counts"].value
        splits = ", ".join(f"{s} {c['drives']}/{c['frames']}" for s, c in counts.items())
        print(f"  {key.path[0].upper()} {metadata['split_version'].value}: {splits}; {', '.join(checks[key.path[0]])}")


def _print_models_summary(trained: dict[str, ExecuteInProcessResult | str]) -> None:
    print("\ntrained models:")
    for market, outcome in trained.items():
        if isinstance(outcome, str):
            print(f"  {market.upper()}: {outcome}")
            continue
        checks = {e.check_name: e.passed for e in outcome.get_asset_check_evaluations()}
        for event in outcome.get_asset_materialization_events():
            meta = event.materialization.metadata
            failed = sorted(name for name, ok in checks.items() if not ok)
            print(
                f"  {market.upper()}: {meta['registered_model'].value} version {meta['version'].value}: test MAE "
                f"{meta['test_mae'].value:.2f} deg vs baseline {meta['test_baseline_mae'].value:.2f} deg; "
                + (f"gate failed ({', '.join(failed)})" if failed else "candidate, waiting for approval")
            )
    if any(not isinstance(o, str) for o in trained.values()):
        print(models_summary())


def _print_metrics_summary(defs: Definitions, instance: DagsterInstance) -> None:
    """What the Prometheus endpoint (`python -m ad_platform metrics`) reports for the drives, per market."""
    from prometheus_client.parser import text_string_to_metric_families

    from ad_platform.metrics import render

    wanted = {"ad_drives_landed", "ad_drives_decoded"}
    counts: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(render(defs, instance)):
        for sample in family.samples:
            if sample.name in wanted:
                counts.setdefault(sample.labels["market"], {})[sample.name] = sample.value
    print("\nmetrics endpoint (drives per market):")
    for market, values in sorted(counts.items()):
        print(
            f"  {market.upper()}: {values.get('ad_drives_landed', 0):.0f} landed, "
            f"{values.get('ad_drives_decoded', 0):.0f} decoded"
        )


def cmd_decode(args: argparse.Namespace) -> int:
    from ad_core.decode.__main__ import main as decode_main

    return decode_main(args.rest)


def cmd_metrics(args: argparse.Namespace) -> int:
    from ad_platform.metrics import run

    return run(args)


def _registry() -> tuple[object, object]:
    from ad_resources.s3 import resources_from_env
    from ad_resources.tracking import tracking_from_env

    return tracking_from_env(settings.state_dir()).client(), resources_from_env()["lake"]


def _write_audit(lake: object, record: object) -> str:
    from ad_common.lake_layout import MODEL_APPROVALS

    path = MODEL_APPROVALS.path(record.model, f"{record.at_ns}-v{record.version}")  # type: ignore[attr-defined]
    lake.write_table(path, record.to_table())  # type: ignore[attr-defined]
    return path


def _audited(change: Callable[[MlflowClient], AuditRecord], describe: Callable[[AuditRecord], str]) -> int:
    """Run one registry change (approve / rollback), write its audit record, print what happened."""
    from ad_core.train.registry import GateRefused

    client, lake = _registry()
    try:
        record = change(client)
    except GateRefused as exc:
        print(f"REFUSED: {exc}", file=sys.stderr)
        return 2
    print(f"{describe(record)}; audit: {_write_audit(lake, record)}")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    """Move the `approved` alias to a version whose gate passed; audited in MLflow tags and the catalog."""
    from ad_core.train.registry import approve

    return _audited(
        lambda client: approve(client, args.model, args.version, args.by, args.note),
        lambda r: (
            f"{r.model} version {r.version} approved by {r.actor} at {r.at}"
            + (f" (was version {r.previous_version})" if r.previous_version else "")
        ),
    )


def cmd_rollback(args: argparse.Namespace) -> int:
    """Move `approved` back to the previously approved version (or `--to VERSION`, or remove it); audited."""
    from ad_core.train.registry import rollback

    return _audited(
        lambda client: rollback(client, args.model, args.by, args.note, args.to),
        lambda r: (
            f"{r.model}: approval of version {r.version} revoked by {r.actor}; approved is now "
            + (f"version {r.previous_version}" if r.previous_version else "no version")
        ),
    )


def cmd_models(args: argparse.Namespace) -> int:
    """Registered models, their versions, aliases and gate status (what waits for approval)."""
    print(models_summary())
    return 0


def models_summary() -> str:
    from ad_core.train.registry import GATE_STATUS, failed_checks

    client, _ = _registry()
    lines = []
    for rm in client.search_registered_models():  # type: ignore[attr-defined]
        aliases: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        lines.append(f"{rm.name}:")
        versions = client.search_model_versions(f"name = '{rm.name}'")  # type: ignore[attr-defined]
        for mv in sorted(versions, key=lambda v: int(v.version)):
            gate = mv.tags.get(GATE_STATUS, "not run")
            failed = failed_checks(mv)
            waiting = "candidate" in aliases.get(str(mv.version), []) and "approved" not in aliases.get(
                str(mv.version), []
            )
            lines.append(
                f"  version {mv.version}: aliases [{', '.join(sorted(aliases.get(str(mv.version), [])))}] "
                f"gate {gate}{' (' + ', '.join(failed) + ')' if failed else ''}"
                f"{'  <- waiting for approval: python -m ad_platform approve ' + rm.name + ' ' + str(mv.version) + ' --by NAME --note TEXT' if waiting else ''}"  # noqa: E501
            )
    return "\n".join(lines) if lines else "no registered models"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ad_platform", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run_once_parser = sub.add_parser(
        "run-once", help="register whatever is in the landing zone and materialize it; prints JSON per drive"
    )
    run_once_parser.add_argument("--strict", action="store_true", help="exit 1 if any drive failed")
    run_once_parser.add_argument(
        "--settle-s",
        type=float,
        default=5.0,
        help="a drive whose folder changed less than this many seconds ago is still being written: it is "
        "reported as 'settling' and left for the next run (default 5)",
    )
    run_once_parser.add_argument(
        "--wait",
        action="store_true",
        help=f"wait for another run-once to finish instead of exiting {EXIT_BUSY}",
    )
    run_once_parser.set_defaults(func=cmd_run_once)

    demo = sub.add_parser("demo", help="generate a small fleet and materialize the whole graph")
    demo.add_argument("--drives", type=int, default=5, help="drives per market")
    demo.add_argument("--markets", default="de,us,cn,jp")
    demo.add_argument("--minutes", type=float, default=1.0)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help="training epochs of each market's model")
    demo.add_argument(
        "--no-bad-drives",
        dest="with_bad_drives",
        action="store_false",
        help="skip the two deliberately bad drives that show quarantine and a blocking check",
    )
    demo.set_defaults(func=cmd_demo)

    review = sub.add_parser(
        "review", help="start the local Label Studio and push each market's split as a review project (docs/review.md)"
    )
    review.add_argument("--markets", default="de,us,cn,jp")
    review.add_argument("--split-version", default="v1")
    review.add_argument("--poll", action="store_true", help="pull the verdicts instead (what the sensor does)")
    review.add_argument("--stop", action="store_true", help="stop the local Label Studio")
    review.set_defaults(func=cmd_review)

    metrics = sub.add_parser("metrics", help="serve pipeline metrics (Prometheus text format) on /metrics")
    metrics.add_argument("--port", type=int, default=9464, help="port of /metrics (default 9464)")
    metrics.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    metrics.add_argument("--once", action="store_true", help="print one exposition to stdout and exit")
    metrics.set_defaults(func=cmd_metrics)

    approve = sub.add_parser("approve", help="approve a registered model version (moves the `approved` alias)")
    approve.add_argument("model", help="registered model, e.g. steering-de")
    approve.add_argument("version")
    approve.add_argument("--by", required=True, help="who approves (recorded)")
    approve.add_argument("--note", required=True, help="why (recorded)")
    approve.set_defaults(func=cmd_approve)

    rollback = sub.add_parser("rollback", help="move `approved` back to the previously approved version (audited)")
    rollback.add_argument("model")
    rollback.add_argument("--to", default=None, help="a version approved before (default: the previous approval)")
    rollback.add_argument("--by", required=True)
    rollback.add_argument("--note", required=True)
    rollback.set_defaults(func=cmd_rollback)

    models = sub.add_parser("models", help="registered models: versions, aliases, gate status")
    models.set_defaults(func=cmd_models)

    lineage = sub.add_parser(
        "lineage",
        help="engine -> model version and MLflow run -> split manifest -> drives -> synced -> decoded -> raw files",
    )
    lineage.add_argument("ref", help="engine sha256 (or a prefix), MODEL@ALIAS (steering-de@approved) or MODEL/VERSION")
    lineage.set_defaults(func=cmd_lineage)

    decode = sub.add_parser("decode", help="decode one log file or folder outside Dagster (see --help)", add_help=False)
    decode.add_argument("rest", nargs=argparse.REMAINDER)
    decode.set_defaults(func=cmd_decode)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["decode"]:
        # Everything after `decode` is the decode CLI's own, `--help` included (argparse would claim it).
        return cmd_decode(argparse.Namespace(rest=argv[1:]))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
