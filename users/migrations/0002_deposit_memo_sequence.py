"""Balance-deposit memos (MEMO_ID) for users come from their own sequence, below 10^15."""

from django.db import migrations

SQL = "CREATE SEQUENCE IF NOT EXISTS user_deposit_memo_seq START WITH 100001 MAXVALUE 999999999999999;"


class Migration(migrations.Migration):
    dependencies = [("users", "0001_initial")]
    operations = [migrations.RunSQL(SQL, "DROP SEQUENCE IF EXISTS user_deposit_memo_seq;")]
