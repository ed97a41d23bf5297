"""`quotes_in_flight(statuses)`: the quotes in the given statuses, by the status index.

Quoting sums what paid, not yet executed quotes already claim from the treasury, in a
statement prepared once per connection (quotes.services.quotes._reads_statement). Written
in that statement, the sum's cached plan is whatever suited the table when the connection
first ran it: a full scan if the table was a few pages then, kept as it grows to millions
of rows until statistics change (never, with autovacuum off; measured: half the bench's
connections read every quote for every quote). Inside this function the plan is cached as
well, but made with sequential scans disabled (the function's own SET, undone when it
returns), so it is the status index whatever the table's size at the time.
"""

from django.db import migrations

CREATE = """
CREATE FUNCTION quotes_in_flight(statuses text[])
RETURNS TABLE (max_lamports_spend numeric, token_outflows jsonb)
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY SELECT q.max_lamports_spend, q.token_outflows
                 FROM quotes_quote q WHERE q.status = ANY (statuses);
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("quotes", "0006_quote_fewer_indexes")]
    operations = [migrations.RunSQL(CREATE, "DROP FUNCTION IF EXISTS quotes_in_flight(text[]);")]
