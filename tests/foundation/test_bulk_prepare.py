"""config.bulk's shortcut for values already of their column's type must bind exactly
what the field's own `get_db_prep_save` (the ORM's path) binds, on every field of every
model, and take the field's path for anything else."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
from django.apps import apps
from django.db import connection
from django.utils import timezone

from config.bulk import _preparer, _unchanged_type, _value_of

pytestmark = [pytest.mark.django_db,
              pytest.mark.filterwarnings("ignore:DateTimeField .* received a naive datetime")]

SAMPLES = [
    None, "", "text", "7", str(uuid.uuid4()), uuid.uuid4(), timezone.now(),
    dt.datetime(2026, 1, 1, 12, 0), dt.date(2026, 1, 1), Decimal(5), Decimal("1.5"),
    Decimal("NaN"), Decimal("Infinity"), True, False, 0, 7, 10**30, 1.5, b"bytes",
    {"a": 1}, ["x"], "2026-01-01T00:00:00+00:00",
]

OUR_APPS = {"users", "quotes", "execution", "risk", "settlement"}


def _fields():
    for model in apps.get_models():
        if model._meta.app_label in OUR_APPS:
            for field in model._meta.concrete_fields:
                yield pytest.param(field, id=f"{model.__name__}.{field.name}")


def _outcome(prepare, field, value):
    try:
        result = prepare(value, connection)
    except Exception as exc:  # noqa: BLE001 - the kind of refusal must match too
        return ("raises", type(exc))
    return ("binds", type(result), repr(result))


@pytest.mark.parametrize("field", list(_fields()))
def test_the_shortcut_binds_what_the_field_binds(field):
    fast = _preparer(field)
    for value in SAMPLES:
        assert _outcome(fast, field, value) == _outcome(field.get_db_prep_save, field, value), value


def test_the_shortcut_covers_the_columns_the_batches_write():
    from execution.models import Execution, ExecutionTransition
    from risk.models import AuditEvent
    from settlement.models import JournalEntry, Posting

    covered = {(f.model.__name__, f.name) for model in (AuditEvent, ExecutionTransition,
                                                         Execution, JournalEntry, Posting)
               for f in model._meta.concrete_fields if _unchanged_type(f) is not None}
    assert {("AuditEvent", "id"), ("AuditEvent", "created_at"), ("AuditEvent", "actor"),
            ("ExecutionTransition", "execution"), ("Execution", "quote"),
            ("Posting", "amount"), ("JournalEntry", "user")} <= covered
    # Integers bind as psycopg's sized types on this backend: never shortcut.
    assert _unchanged_type(Posting._meta.get_field("id")) is None


@pytest.mark.parametrize("field", list(_fields()))
def test_values_are_read_as_pre_save_reads_them(field):
    row = field.model()
    assert _value_of(field)(row) == field.pre_save(row, True) or getattr(field, "auto_now", False) \
        or getattr(field, "auto_now_add", False)
