"""PostgreSQL enforces double entry: every journal entry's postings sum to zero per asset.

The check is a constraint trigger DEFERRABLE INITIALLY DEFERRED, so it runs at COMMIT,
after all postings of the entry are written; an unbalanced entry aborts the transaction
whatever code wrote it. A second trigger keeps each posting's asset equal to its account's.
"""

from django.db import migrations

SQL = """
CREATE OR REPLACE FUNCTION ledger_entry_must_balance() RETURNS trigger AS $$
DECLARE
    entry uuid;
    unbalanced record;
BEGIN
    entry := COALESCE(NEW.entry_id, OLD.entry_id);
    SELECT asset, SUM(amount) AS total INTO unbalanced
      FROM settlement_posting WHERE entry_id = entry
      GROUP BY asset HAVING SUM(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % does not balance for asset %: sum %',
            entry, unbalanced.asset, unbalanced.total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER posting_entry_balances
    AFTER INSERT OR UPDATE OR DELETE ON settlement_posting
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_must_balance();

CREATE OR REPLACE FUNCTION posting_asset_matches_account() RETURNS trigger AS $$
BEGIN
    IF NEW.asset <> (SELECT asset FROM settlement_ledgeraccount WHERE id = NEW.account_id) THEN
        RAISE EXCEPTION 'posting asset % differs from its account''s asset', NEW.asset
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER posting_asset_matches_account
    BEFORE INSERT OR UPDATE ON settlement_posting
    FOR EACH ROW EXECUTE FUNCTION posting_asset_matches_account();

-- Postings are history: they are never edited or removed once committed.
CREATE OR REPLACE FUNCTION ledger_is_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'integrity_constraint_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER posting_append_only BEFORE UPDATE OR DELETE ON settlement_posting
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER journal_entry_append_only BEFORE UPDATE OR DELETE ON settlement_journalentry
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();
"""

REVERSE = """
DROP TRIGGER IF EXISTS journal_entry_append_only ON settlement_journalentry;
DROP TRIGGER IF EXISTS posting_append_only ON settlement_posting;
DROP FUNCTION IF EXISTS ledger_is_append_only();
DROP TRIGGER IF EXISTS posting_asset_matches_account ON settlement_posting;
DROP FUNCTION IF EXISTS posting_asset_matches_account();
DROP TRIGGER IF EXISTS posting_entry_balances ON settlement_posting;
DROP FUNCTION IF EXISTS ledger_entry_must_balance();
"""


class Migration(migrations.Migration):
    dependencies = [("settlement", "0002_initial")]
    operations = [migrations.RunSQL(SQL, REVERSE)]
