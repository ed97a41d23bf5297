"""config.bulk: several tables' rows in one statement, read back exactly as the ORM wrote
them, whether a table gets one row (VALUES) or several (one array per column). Its
statements carry PostgreSQL's own `$n` placeholders, which psycopg sends without parsing,
bound server-side inside `prepared_statements()` and outside it."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from decimal import Decimal

import psycopg._queries
import pytest
from django.db import connection, transaction
from django.db.backends.postgresql.base import Cursor, ServerBindingCursor
from django.db.utils import DataError, IntegrityError
from django.test.utils import CaptureQueriesContext

from config.bulk import insert_if_new, insert_together, update_rows
from config.prepared import RawBindingCursor, prepared_statements, raw_cursor
from execution.models import Execution, ExecutionAttempt
from quotes.models import Quote, QuoteTransition
from risk.models import AuditEvent
from settlement.models import FundingPayment
from tests.factories import QuoteFactory, UserFactory

pytestmark = pytest.mark.django_db

AWKWARD = [
    {"quote": 'say "hi"', "back\\slash": "a\\b", "braces": "{not,an,array}", "nul": None},
    {"unicode": "Grüße ✓ 💸", "nested": {"list": [1, 2.5, "x", None, True]}, "empty": {}},
    {},
]


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def test_several_rows_of_several_tables_go_in_one_statement_and_read_back_exactly():
    user = UserFactory()
    quote = QuoteFactory(user=user)
    at = dt.datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=dt.UTC)
    audits = [AuditEvent(event_type="bulk_test", actor="test", entity_type="quote",
                         entity_id=str(n), user_id=user.pk if n else None, details=details,
                         created_at=at + dt.timedelta(microseconds=n))
              for n, details in enumerate(AWKWARD)]
    moves = [QuoteTransition(quote=quote, from_status=a, to_status=b, actor="test", at=at,
                             details={"n": n}, tx_hash="")
             for n, (a, b) in enumerate([("pending", "committed"), ("committed", "executing")])]

    with CaptureQueriesContext(connection) as queries:
        insert_together(*audits, *moves)

    assert len(queries) == 1
    stored = list(AuditEvent.objects.filter(event_type="bulk_test").order_by("entity_id"))
    assert [(a.pk, a.details, a.user_id, a.created_at) for a in stored] == [
        (a.pk, a.details, a.user_id, a.created_at) for a in audits]
    assert list(QuoteTransition.objects.filter(quote=quote).order_by("id").values_list(
        "from_status", "to_status", "details")) == [
        ("pending", "committed", {"n": 0}), ("committed", "executing", {"n": 1})]
    assert all(not row._state.adding for row in [*audits, *moves])


def test_one_row_and_many_rows_of_a_table_are_the_same_insert():
    one = AuditEvent(event_type="bulk_one", actor="test", details=AWKWARD[0])
    insert_together(one)
    many = [AuditEvent(event_type="bulk_many", actor="test", details=d) for d in AWKWARD]
    insert_together(*many)

    assert AuditEvent.objects.get(event_type="bulk_one").details == AWKWARD[0]
    stored = AuditEvent.objects.filter(event_type="bulk_many").values_list("details", flat=True)
    assert sorted(map(canonical, stored)) == sorted(map(canonical, AWKWARD))


def test_a_violation_in_any_row_writes_none_of_them():
    quote = QuoteFactory()
    rows = [AuditEvent(event_type="bulk_rollback", actor="test") for _ in range(3)]
    bad = QuoteTransition(quote=quote, from_status="pending", to_status="pending", actor="t")

    with pytest.raises(IntegrityError), transaction.atomic():
        insert_together(*rows, bad, bad)

    assert not AuditEvent.objects.filter(event_type="bulk_rollback").exists()


def test_update_rows_refuses_a_value_too_long_for_its_column_as_the_orm_does():
    execution = Execution.objects.create(quote=QuoteFactory())

    with pytest.raises(DataError, match="too long"), transaction.atomic():
        update_rows(Execution, {execution.pk: {"fail_reason": "X" * 33}})  # varchar(32)

    assert Execution.objects.get(pk=execution.pk).fail_reason == ""


def test_update_rows_gives_each_row_its_own_values():
    quotes = [QuoteFactory() for _ in range(3)]
    updated = update_rows(type(quotes[0]), {
        quotes[0].pk: {"status": "committed"}, quotes[1].pk: {"status": "cancelled"}})

    assert updated == 2
    assert [type(q).objects.get(pk=q.pk).status for q in quotes] == [
        "committed", "cancelled", quotes[2].status]


# -- $n placeholders: no parsing on the client, values bound server-side -----------------------

# psycopg's parsers of `%s` placeholders: server-side binding (`Cursor`) and client-side
# (`ClientCursor`, Django's default), each with and without its cache.
PLACEHOLDER_PARSERS = ["_query2pg", "_query2pg_nocache", "_query2pg_client",
                       "_query2pg_client_nocache"]

# Beyond any fixed-width integer; numeric(78, 0) holds 78 digits. (Arithmetic on a Decimal
# this long would round it to 28 digits: ints first.)
HUGE = Decimal(10**77)
INT8_MAX = 2**63 - 1
INT4_MAX = 2**31 - 1
AWKWARD_TEXT = "it's \"quoted\" \\ %s %(x)s $1 ? Grüße 💸"
# Every byte value: NULs and invalid UTF-8 among them.
AWKWARD_BYTES = bytes(range(256)) + b"\x00\xff"
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))


@pytest.fixture
def parsed(monkeypatch):
    """The statements psycopg parsed for placeholders while the test ran."""
    statements: list[bytes] = []
    for name in PLACEHOLDER_PARSERS:
        parser = getattr(psycopg._queries, name)

        def spy(query, *args, _parser=parser):
            statements.append(query)
            return _parser(query, *args)

        monkeypatch.setattr(psycopg._queries, name, spy)
    return statements


def binding(mode: str) -> contextlib.AbstractContextManager[None]:
    return prepared_statements() if mode == "prepared" else contextlib.nullcontext()


def prepared_statement_texts() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return {statement for (statement,) in cursor.fetchall()}


@pytest.mark.parametrize("mode", ["outside", "prepared"])
def test_bulk_statements_reach_postgresql_without_placeholder_parsing(parsed, mode):
    """The spy sees Django's own statements (so it would see these), not config.bulk's."""
    user = UserFactory()
    quotes = [QuoteFactory(user=user) for _ in range(4)]
    executions = [Execution.objects.create(quote=q) for q in quotes]
    parsed.clear()
    with binding(mode), connection.cursor() as cursor:
        cursor.execute("SELECT %s, %s", [1, "placeholders are parsed here"])
    assert parsed == [b"SELECT %s, %s"]
    parsed.clear()

    with binding(mode):
        insert_together(*[AuditEvent(event_type="bulk_raw", actor="test", entity_id=str(n),
                                     user_id=user.pk, details={"n": n}) for n in range(10)],
                        *[QuoteTransition(quote=q, from_status="pending", to_status="committed",
                                          actor="test", details={}) for q in quotes])
        inserted = insert_if_new(payment(tx_hash=f"raw-{mode}"), unique=("chain", "tx_hash"))
        updated = update_rows(Execution, {e.pk: {"attempt_count": n, "signature": f"sig{n}"}
                                          for n, e in enumerate(executions)})

    assert parsed == []
    assert inserted and updated == 4
    assert AuditEvent.objects.filter(event_type="bulk_raw").count() == 10
    assert QuoteTransition.objects.filter(quote__in=quotes).count() == 4
    assert [Execution.objects.get(pk=e.pk).signature for e in executions] == [
        "sig0", "sig1", "sig2", "sig3"]


def test_a_raw_cursor_leaves_the_connections_cursors_as_they_were():
    connection.ensure_connection()
    psycopg_connection = connection.connection

    with raw_cursor() as raw, connection.cursor() as plain:
        assert type(raw.cursor) is RawBindingCursor
        assert type(plain.cursor) is Cursor
    with prepared_statements(), raw_cursor() as raw, connection.cursor() as plain:
        assert type(raw.cursor) is RawBindingCursor
        assert type(plain.cursor) is ServerBindingCursor
        assert psycopg_connection.prepare_threshold == 0
    assert psycopg_connection.cursor_factory is Cursor
    assert psycopg_connection.prepare_threshold is None


def test_bulk_statements_are_prepared_inside_prepared_statements_only():
    user = UserFactory()
    before = prepared_statement_texts()

    def nine_rows() -> None:
        insert_together(*[AuditEvent(event_type="bulk_prepared", actor="test", user_id=user.pk)
                          for _ in range(9)])

    with CaptureQueriesContext(connection) as outside:
        nine_rows()
    [statement] = [query["sql"] for query in outside.captured_queries]
    assert statement.startswith('INSERT INTO "risk_auditevent"') and statement.endswith("$72)")
    assert prepared_statement_texts() == before
    with prepared_statements():
        nine_rows()
        nine_rows()  # executed as prepared
    assert prepared_statement_texts() - before == {statement}
    assert AuditEvent.objects.filter(event_type="bulk_prepared").count() == 27


def payment(*, tx_hash: str, **fields) -> FundingPayment:
    return FundingPayment(**{
        "chain": "stellar", "tx_hash": tx_hash, "status": "credited", "asset": "XLM",
        "amount": Decimal(1), "from_address": "GFROM", "to_address": "GTO",
        "source": "api", **fields})


@pytest.mark.parametrize("mode", ["outside", "prepared"])
def test_every_field_type_round_trips_exactly_through_both_inserts(mode):
    """uuid, varchar, numeric(78, 0), integer, bigint, boolean, jsonb, timestamptz and NULL,
    at their awkward edges, each read back as the ORM wrote it. (bytea needs the ORM's
    insert: a BinaryField has a placeholder of its own.)"""
    user = UserFactory()
    at = dt.datetime(2099, 11, 21, 17, 30, 0, 123456, tzinfo=IST)  # a quote expires after now
    values: dict[type, dict[str, object]] = {
        Quote: {
            "source_amount": HUGE, "service_fee": Decimal(10**77 - 1), "gas_estimate": Decimal(0),
            "total_cost": Decimal(2 * 10**77 - 1), "destination_amount": Decimal(INT8_MAX + 1),
            "estimated_compute_units": 1_400_000, "priority_fee_micro_lamports": INT8_MAX,
            "token_outflows": {"mint": str(HUGE), "list": [1, 2.5, None, True, "x"]},
            "instructions": AWKWARD, "price_snapshot": {"quote": AWKWARD_TEXT},
            "refund_to": AWKWARD_TEXT, "pay_from_balance": True, "expires_at": at,
            "committed_at": None},
        AuditEvent: {"details": AWKWARD[0], "entity_id": AWKWARD_TEXT, "user_id": None,
                     "created_at": at},
    }
    quote = QuoteFactory.build(user=user, **values[Quote])
    audit = AuditEvent(event_type="bulk_types", actor="test", **values[AuditEvent])
    with binding(mode):
        insert_together(quote, audit)
        assert insert_if_new(payment(tx_hash=AWKWARD_TEXT, amount=HUGE, quote=quote,
                                     user_id=user.pk, chain_details={"raw": AWKWARD},
                                     chain_time=at, resolved_at=None),
                             unique=("chain", "tx_hash"))
        assert not insert_if_new(payment(tx_hash=AWKWARD_TEXT), unique=("chain", "tx_hash"))

    for model, row in [(Quote, quote), (AuditEvent, audit)]:
        stored = model.objects.values(*values[model]).get(pk=row.pk)
        assert stored == values[model], model.__name__
    stored_payment = FundingPayment.objects.get(tx_hash=AWKWARD_TEXT)
    assert (stored_payment.amount, stored_payment.quote_id, stored_payment.user_id,
            stored_payment.chain_details, stored_payment.chain_time,
            stored_payment.resolved_at) == (HUGE, quote.pk, user.pk, {"raw": AWKWARD}, at, None)


@pytest.mark.parametrize("mode", ["outside", "prepared"])
def test_every_field_type_round_trips_exactly_through_update_rows(mode):
    """Each row its own values, under the VALUES' casts: the same statement twice with
    values of other sizes (inside the block: prepared, then run as prepared); also bytea."""
    at = dt.datetime(2026, 11, 21, 17, 30, 0, 654321, tzinfo=IST)
    executions = [Execution.objects.create(quote=QuoteFactory()) for _ in range(2)]
    quote = QuoteFactory()
    attempt = ExecutionAttempt.objects.create(
        execution=executions[0], number=1, signature=f"sig-{mode}", signed_transaction=b"",
        blockhash="hash", last_valid_block_height=1)
    attempt_values = {"signed_transaction": AWKWARD_BYTES, "number": INT4_MAX,
                      "last_valid_block_height": INT8_MAX, "closed_reason": AWKWARD_TEXT,
                      "last_sent_at": at}
    rounds = [
        {executions[0].pk: {"signature": AWKWARD_TEXT, "attempt_count": INT4_MAX,
                            "slot": INT8_MAX, "fee_lamports": HUGE, "compute_units_consumed": None,
                            "error_message": AWKWARD_TEXT * 50, "needs_recovery": True,
                            "submitted_at": at},
         executions[1].pk: {"signature": "", "attempt_count": 0, "slot": None,
                            "fee_lamports": None, "compute_units_consumed": 0,
                            "error_message": "", "needs_recovery": False, "submitted_at": None}},
        {executions[0].pk: {"signature": "s", "attempt_count": 1, "slot": 1,
                            "fee_lamports": Decimal(1), "compute_units_consumed": INT8_MAX,
                            "error_message": "e", "needs_recovery": False,
                            "submitted_at": at + dt.timedelta(microseconds=1)},
         executions[1].pk: {"signature": AWKWARD_TEXT, "attempt_count": 7, "slot": 2**40,
                            "fee_lamports": Decimal(9 * 10**77), "compute_units_consumed": None,
                            "error_message": "\n", "needs_recovery": True, "submitted_at": at}},
    ]
    quote_values = {"token_outflows": {"nested": AWKWARD}, "total_cost": HUGE,
                    "source_amount": Decimal(10**77 - int(quote.service_fee + quote.gas_estimate)),
                    "estimated_compute_units": 1_400_000}

    with binding(mode):
        for values in rounds:
            assert update_rows(Execution, values) == 2
            names = list(values[executions[0].pk])
            assert {e.pk: Execution.objects.values(*names).get(pk=e.pk)
                    for e in executions} == values
        assert update_rows(Quote, {quote.pk: quote_values}) == 1
        assert update_rows(ExecutionAttempt, {attempt.pk: attempt_values}) == 1

    assert Quote.objects.values(*quote_values).get(pk=quote.pk) == quote_values
    stored_attempt = ExecutionAttempt.objects.values(*attempt_values).get(pk=attempt.pk)
    assert {**stored_attempt, "signed_transaction": bytes(stored_attempt["signed_transaction"])
            } == attempt_values


# -- new_row --------------------------------------------------------------------------------

def field_values(row) -> dict:
    return {f.attname: getattr(row, f.attname) for f in type(row)._meta.concrete_fields}


def test_new_row_builds_what_the_keyword_constructor_builds():
    from config.bulk import new_row

    source = QuoteFactory.build(user=UserFactory())
    values = field_values(source)
    built, keyword = new_row(Quote, **values), Quote(**values)
    assert field_values(built) == field_values(keyword) == values
    assert built._state.adding and built._state.db is None


def test_new_row_fills_defaults_as_the_model_does():
    from config.bulk import new_row

    before = dt.datetime.now(dt.UTC)
    event = new_row(AuditEvent, event_type="drill", actor="pytest")
    assert event.id is not None and event.id != new_row(AuditEvent, event_type="x", actor="y").id
    assert event.created_at >= before
    assert (event.entity_type, event.entity_id, event.user_id, event.details) == ("", "", None, {})
    insert_together(event)
    assert AuditEvent.objects.get(pk=event.pk).event_type == "drill"


def test_new_row_refuses_names_that_are_not_field_attnames():
    from config.bulk import new_row

    with pytest.raises(TypeError, match="user_id, not user"):
        new_row(AuditEvent, event_type="drill", actor="pytest", user=UserFactory())
    with pytest.raises(TypeError, match="no fields \\['colour'\\]"):
        new_row(AuditEvent, event_type="drill", actor="pytest", colour="red")
