"""Stellar MEMO_ID values for quotes come from a sequence starting at 10^15.

User balance-deposit memos live below 10^15 (users.User CHECK), so a memo can never name
both a quote and a balance. PostgreSQL bigint keeps them below 2^63, inside uint64.
"""

from django.db import migrations

SQL = "CREATE SEQUENCE IF NOT EXISTS quote_memo_id_seq START WITH 1000000000000000 MINVALUE 1000000000000000;"


class Migration(migrations.Migration):
    dependencies = [("quotes", "0002_initial")]
    operations = [migrations.RunSQL(SQL, "DROP SEQUENCE IF EXISTS quote_memo_id_seq;")]
