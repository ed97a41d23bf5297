"""The audit log is append-only at the database, and the breaker's single state row exists."""

from django.db import migrations

SQL = """
CREATE OR REPLACE FUNCTION audit_log_is_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON risk_auditevent
    FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();

INSERT INTO risk_circuitbreaker (id, is_open, reason, trigger, opened_by, consecutive_failures,
                                 updated_at)
VALUES (1, false, '', '', '', 0, now()) ON CONFLICT (id) DO NOTHING;
"""

REVERSE = """
DROP TRIGGER IF EXISTS audit_event_append_only ON risk_auditevent;
DROP FUNCTION IF EXISTS audit_log_is_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("risk", "0002_initial")]
    operations = [migrations.RunSQL(SQL, REVERSE)]
