"""`manage.py reconcile`: run the reconciliation now, with a progress bar and a summary.

Exit status: 0 when the books match, 1 when a check could not run, 2 on a mismatch (the
report is stored, an alert raised and the circuit breaker tripped, as for the schedule)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from settlement.models import ReconciliationReport
from settlement.services.reconciliation import reconcile_run


class ProgressBar:
    """A one-line text progress bar (redrawn in place on a terminal, one line per step
    otherwise), so the command needs no extra dependency."""

    def __init__(self, stream: OutputWrapper, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.interactive = stream.isatty()

    def __call__(self, step: str, done: int, total: int) -> None:
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"[{bar}] {done}/{total} {step}"
        if self.interactive:
            self.stream.write("\r" + line.ljust(self.width + 40), ending="\n" if done == total else "")
        else:
            self.stream.write(line)
        self.stream.flush()


class Command(BaseCommand):
    help = "Reconcile the books with themselves and with the chains, now."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        progress = None if options["quiet"] or options["json"] else ProgressBar(self.stderr)
        report = reconcile_run(triggered_by="command", progress=progress)
        if options["json"]:
            self.stdout.write(json.dumps({"report_id": report.pk, "outcome": report.outcome,
                                          "checks": report.checks, "mismatches": report.mismatches},
                                         indent=2, sort_keys=True))
        else:
            self._summary(report)
        if report.outcome == ReconciliationReport.Outcome.MISMATCH:
            raise CommandError(f"reconciliation {report.pk}: {len(report.mismatches)} mismatch(es); "
                               "alert raised, circuit breaker tripped", returncode=2)
        if report.outcome == ReconciliationReport.Outcome.ERROR:
            raise CommandError(f"reconciliation {report.pk}: some checks could not run", returncode=1)

    def _summary(self, report: ReconciliationReport) -> None:
        marks = {"ok": self.style.SUCCESS("ok"), "mismatch": self.style.ERROR("MISMATCH"),
                 "error": self.style.WARNING("error"), "not_checkable": "n/a"}
        self.stdout.write(f"Reconciliation report {report.pk} ({report.outcome})")
        for name, check in report.checks.items():
            self.stdout.write(f"  {marks.get(check['status'], check['status']):>10}  {name}: "
                              f"{check['summary']}")
            assets = check.get("details", {}).get("assets") if name == "treasury_balances" else None
            for asset, facts in (assets or {}).items():
                if facts.get("status") == "not_checkable":
                    self.stdout.write(f"              {asset}: not checkable in sandbox "
                                      f"(books {facts.get('books')})")
                elif "chain" in facts:
                    self.stdout.write(f"              {asset}: chain {facts['chain']} books "
                                      f"{facts['books']} in flight {facts['in_flight']}")
        for mismatch in report.mismatches[:50]:
            facts = json.dumps({k: v for k, v in mismatch.items() if k not in ("check", "problem")},
                               sort_keys=True)
            self.stdout.write(self.style.ERROR(
                f"  - {mismatch.get('check')}: {mismatch.get('problem')} {facts}"))
        if len(report.mismatches) > 50:
            self.stdout.write(f"  ... and {len(report.mismatches) - 50} more (see the report)")
