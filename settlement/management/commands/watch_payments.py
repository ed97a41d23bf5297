"""`manage.py watch_payments [--interval 5] [--once]`: the Stellar watcher in a loop, for
deployments that want lower latency than the once-a-minute django-q2 schedule. Safe to run
beside the schedule: an advisory lock lets one run work at a time, and the cursor it
resumes from is the same persisted WatcherCursor."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from settlement.watchers import stellar_watch_once


class Command(BaseCommand):
    help = "Poll Horizon for incoming treasury payments and book them (live mode)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--interval", type=float, default=5.0, help="seconds between runs")
        parser.add_argument("--once", action="store_true", help="run one pass and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        while True:
            close_old_connections()  # a long-lived loop must not keep a dead connection
            report = stellar_watch_once()
            if options["once"] or report.skipped.startswith("sandbox"):
                self.stdout.write(str(asdict(report)))
                return
            if report.booked or report.refused or report.stopped:
                self.stdout.write(str(asdict(report)))
            time.sleep(options["interval"])
