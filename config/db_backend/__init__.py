"""Django's PostgreSQL backend, plus a `check` of our choice for its psycopg pool and a
health check of persistent connections that sends nothing to a quiet one.

`ENGINE: "config.db_backend"` (see `base.DatabaseWrapper`); both checks rest on
`pool_check.connection_is_quiet`.
"""
