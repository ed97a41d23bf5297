"""`manage.py recover_executions`: drive executions a crash left unfinished (run by
`make run` before the worker starts; the same job runs every minute on the worker)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from execution.services.recovery import execution_recover_stuck


class Command(BaseCommand):
    help = "Drive executions left in signed/submitted by a crash to a final state."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=float, default=0.0,
                            help="only executions untouched for this many seconds (default 0: "
                                 "at start-up no other worker is running)")

    def handle(self, *args: Any, **options: Any) -> None:
        counts = execution_recover_stuck(older_than_seconds=options["older_than"])
        summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "nothing to do"
        self.stdout.write(f"recover_executions: {summary}")
