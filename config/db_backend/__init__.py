"""Django's PostgreSQL backend, plus a `check` of our choice for its psycopg pool.

`ENGINE: "config.db_backend"` (see `base.DatabaseWrapper`); the check itself is
`pool_check.check_quiet_connection`.
"""
