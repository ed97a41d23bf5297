"""Settings, read once from the environment (django-environ).

Every knob has a default that runs the embedded setup (`CHAIN_MODE=sandbox`, embedded
PostgreSQL, the LiteSVM sandbox, fixed prices) and is listed in `.env.example`.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from pathlib import Path

import environ

from config.db_backend.pool_check import check_quiet_connection
from config.embedded import database_settings_from_uri, embedded_database_uri, sandbox_identity

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DATA_DIR = Path(env.str("DATA_DIR", default=str(BASE_DIR / ".data")))

CHAIN_MODE = env.str("CHAIN_MODE", default="sandbox")
if CHAIN_MODE not in ("sandbox", "live"):
    raise environ.ImproperlyConfigured("CHAIN_MODE must be 'sandbox' or 'live'")
IS_LIVE = CHAIN_MODE == "live"

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if IS_LIVE:
        raise environ.ImproperlyConfigured("SECRET_KEY is required in live mode")
    # A per-checkout key: stable across restarts, never shared between machines.
    SECRET_KEY = "sandbox-" + hashlib.sha256(str(BASE_DIR).encode()).hexdigest()
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver", "[::1]"])
PORT = env.int("PORT", default=8000)
# `make run`'s daphne processes sharing PORT (0: one per core), and the threads each runs
# plain HTTP requests on (config.serving; WebSocket stays on Channels).
WEB_PROCESSES = env.int("WEB_PROCESSES", default=0)
WEB_HTTP_THREADS = env.int("WEB_HTTP_THREADS", default=8)

INSTALLED_APPS = [
    "daphne",
    # Django admin on our own AdminSite (operator dashboard, TOTP two-factor sign-in).
    "config.admin_site.OpsAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "channels_postgres",
    "django_q",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "users",
    "quotes",
    "execution",
    "risk",
    "settlement",
]

MIDDLEWARE = [
    "config.middleware.RequestIdMiddleware",
    "config.middleware.HttpMetricsMiddleware",
    "config.middleware.CorsMiddleware",
    "config.middleware.JsonErrorMiddleware",
    "config.middleware.BodySizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# What only a signed-in browser (the admin) needs: its session, the CSRF check on it, its
# user, two-factor and flash messages. The API authenticates every request by its bearer
# token and sets no cookie, so config.serving runs the requests outside the admin's paths
# (config.admin_paths) without these (~200,000 instructions a request: 7% of a trivial
# insert's, 3.4% of a quote's).
BROWSER_ONLY_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"
AUTH_USER_MODEL = "users.User"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: PostgreSQL only. DATABASE_URL, else the embedded server in DATA_DIR. ---
DATABASE_URL = env.str("DATABASE_URL", default="")
if not DATABASE_URL:
    DATABASE_URL = embedded_database_uri(DATA_DIR)
_db = database_settings_from_uri(DATABASE_URL)
# Django's PostgreSQL backend with a cheaper health check and pool check (config.db_backend).
_db["ENGINE"] = "config.db_backend"
_db["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
_db["CONN_HEALTH_CHECKS"] = True
_db["OPTIONS"] = {"connect_timeout": 5}
# The ASGI web process runs each sync view in a short-lived thread, so per-thread
# persistent connections pile up ("too many clients"); a psycopg pool bounds them.
# Forking processes (the django-q2 cluster) keep plain persistent connections instead.
# Its checkout check costs a round trip only for a connection the server has since spoken
# on (config/db_backend/pool_check.py); config.db_backend lets the pool take that check.
if env.bool("DB_POOL", default=False):
    _db["CONN_MAX_AGE"] = 0
    _db["OPTIONS"]["pool"] = {"min_size": 2, "max_size": env.int("DB_POOL_MAX_SIZE", default=10),
                              "timeout": 10, "check": check_quiet_connection}
# Each checkout gets its own test database, so parallel checkouts on one server don't collide.
_db["TEST"] = {"NAME": "test_solpay_" + hashlib.sha256(str(BASE_DIR).encode()).hexdigest()[:8]
               + (f"_{env.str('TEST_DB_SUFFIX')}" if env.str("TEST_DB_SUFFIX", default="") else "")}
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# Bodies above this are refused before parsing (413 → PAYLOAD_TOO_LARGE).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BODY_BYTES", default=256 * 1024)

# --- REST API ---
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["users.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["config.parsers.StrictJSONParser"],
    # X-Forwarded-For is trusted only through this many proxies (0: the socket peer).
    "NUM_PROXIES": env.int("TRUSTED_PROXY_COUNT", default=0),
    "EXCEPTION_HANDLER": "config.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "config.pagination.ApiPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_RATES": {
        "auth": env.str("THROTTLE_AUTH", default="30/min"),
        "quote_user": env.str("THROTTLE_QUOTE_USER", default="6000/min"),
        "quote_ip": env.str("THROTTLE_QUOTE_IP", default="12000/min"),
        "webhook": env.str("THROTTLE_WEBHOOK", default="6000/min"),
    },
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Solana payment execution API",
    "DESCRIPTION": "Quote, pay on Stellar or NEAR, and get a Solana transaction executed.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # One schema name per chain choice set, whichever serializer field uses it.
    "ENUM_NAME_OVERRIDES": {"SourceChainEnum": ["stellar", "near"], "ChainEnum": "config.chains.Chain"},
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI / Redoc assets from drf-spectacular-sidecar (our static files, no CDN).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.api_docs.add_standard_error_responses",
    ],
}
# Idempotency-Key records are kept at least this long (never less than 24).
IDEMPOTENCY_KEY_RETENTION_HOURS = env.int("IDEMPOTENCY_KEY_RETENTION_HOURS", default=24)

# --- Cache (throttling, price cache). Redis when given, else the database. ---
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Channels: Redis pub/sub when REDIS_URL is set, else PostgreSQL LISTEN/NOTIFY. ---
CHANNEL_LAYER = env.str("CHANNEL_LAYER", default="redis" if REDIS_URL else "postgres")
CHANNEL_LAYERS = {
    "redis": {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    },
    "postgres": {
        "default": {"BACKEND": "config.channel_layers.DefaultDatabaseChannelLayer",
                    "CONFIG": {"expiry": 60}}
    },
}[CHANNEL_LAYER]

# --- django-q2: ORM broker by default (no extra server), Redis when given. ---
Q_CLUSTER = {
    "name": "solpay",
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": 150,  # > the 120 s Solana confirmation window
    "retry": 180,  # must exceed timeout; the broker is at-least-once anyway
    "max_attempts": 3,
    "queue_limit": 100,
    # A worker is replaced after this many tasks (django-q2's default, 500, replaced each of
    # two workers every ~5 s at 200 payments/s: a new process, a new database connection and
    # cold caches, then a slow first batch) or once it holds more than max_rss KB.
    "recycle": env.int("Q_RECYCLE", default=20_000),
    "max_rss": env.int("Q_MAX_RSS_KB", default=512 * 1024),
    "bulk": 10,
    "poll": 0.05,
    "catch_up": False,
    "ack_failures": True,
    # Successful results are not stored: each execution's history is in its own tables and
    # the audit log, and with a positive limit django-q2 locks and loads every stored success
    # row on each save (the cluster's largest per-task cost under load). Failures are kept.
    "save_limit": env.int("Q_SAVE_LIMIT", default=-1),
    "label": "Task queue",
}
Q_BROKER = env.str("Q_BROKER", default="redis" if REDIS_URL else "orm")
if Q_BROKER == "redis":
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
    Q_CLUSTER["broker_class"] = "config.queue_broker.OrmBroker"  # one-statement claims
Q_SYNC = env.bool("Q_SYNC", default=False)
if Q_SYNC:
    Q_CLUSTER["sync"] = True

# --- Chains (sandbox mode fills missing keys from a per-checkout identity file) ---
_identity = sandbox_identity(DATA_DIR) if not IS_LIVE else {}
SOLANA_RPC_URL = env.str("SOLANA_RPC_URL", default="http://127.0.0.1:8899")
SOLANA_CLUSTER = env.str("SOLANA_CLUSTER", default="sandbox" if not IS_LIVE else "devnet")
SOLANA_TREASURY_KEY = env.str("SOLANA_TREASURY_KEY",
                              default=_identity.get("solana_treasury_key", ""))
SOLANA_USDC_MINT = env.str("SOLANA_USDC_MINT", default="")
if not SOLANA_USDC_MINT and _identity:
    from solders.keypair import Keypair as _Keypair

    SOLANA_USDC_MINT = str(_Keypair.from_base58_string(_identity["usdc_mint_key"]).pubkey())
SOLANA_USDC_DECIMALS = env.int("SOLANA_USDC_DECIMALS", default=6)
SOLANA_CONFIRM_TIMEOUT_SECONDS = env.int("SOLANA_CONFIRM_TIMEOUT_SECONDS", default=120)
SOLANA_RPC_TIMEOUT_SECONDS = env.float("SOLANA_RPC_TIMEOUT_SECONDS", default=10.0)
# Executor: re-send the same signed bytes this often while unconfirmed; sign a new attempt
# (only after the previous one's blockhash expired) at most this many times in all; the
# recovery job leaves executions younger than the grace period to their own worker.
EXECUTION_RESEND_INTERVAL_SECONDS = env.float("EXECUTION_RESEND_INTERVAL_SECONDS", default=2.0)
EXECUTION_MAX_ATTEMPTS = env.int("EXECUTION_MAX_ATTEMPTS", default=3)
# A worker executes up to this many waiting committed quotes together (one transaction per
# step for all of them), and waits this long for them to land before handing stragglers
# to the one-at-a-time driver (which re-sends and re-signs as needed).
EXECUTION_BATCH_SIZE = env.int("EXECUTION_BATCH_SIZE", default=32)
EXECUTION_BATCH_CONFIRM_SECONDS = env.float("EXECUTION_BATCH_CONFIRM_SECONDS", default=2.0)
EXECUTION_RECOVERY_GRACE_SECONDS = env.float("EXECUTION_RECOVERY_GRACE_SECONDS", default=5.0)
# A committed quote queues a wake-up only when none is pending, or when the pending one has
# waited this long (its task lost with a killed worker): execution/services/wakeup.py.
EXECUTION_WAKEUP_STALE_SECONDS = env.float("EXECUTION_WAKEUP_STALE_SECONDS", default=5.0)
SOLANA_ALLOWED_PROGRAMS = env.list(
    "SOLANA_ALLOWED_PROGRAMS",
    default=[
        "11111111111111111111111111111111",  # System
        "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA",  # SPL Token
        "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb",  # Token-2022
        "ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL",  # Associated Token Account
        "MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr",  # Memo v2
        "Memo1UhkJRfHyvLMcVucJwxXeuD728EqVDDwQDxFMNo",  # Memo v1
        "ComputeBudget111111111111111111111111111111",  # Compute Budget
    ],
)

STELLAR_HORIZON_URL = env.str("STELLAR_HORIZON_URL", default="https://horizon-testnet.stellar.org")
STELLAR_NETWORK_PASSPHRASE = env.str(
    "STELLAR_NETWORK_PASSPHRASE", default="Test SDF Network ; September 2015"
)
STELLAR_TREASURY_ADDRESS = env.str("STELLAR_TREASURY_ADDRESS",
                                   default=_identity.get("stellar_treasury_address", ""))
STELLAR_TREASURY_SECRET = env.str("STELLAR_TREASURY_SECRET",
                                  default=_identity.get("stellar_treasury_secret", ""))

NEAR_RPC_URL = env.str("NEAR_RPC_URL", default="https://rpc.testnet.near.org")
NEAR_NETWORK = env.str("NEAR_NETWORK", default="testnet")
NEAR_PAYMENT_ACCOUNT = env.str("NEAR_PAYMENT_ACCOUNT",
                               default=_identity.get("near_payment_account", ""))
NEAR_TREASURY_KEY = env.str("NEAR_TREASURY_KEY",
                            default=_identity.get("near_treasury_key_hex", ""))

CHAIN_HTTP_TIMEOUT_SECONDS = env.float("CHAIN_HTTP_TIMEOUT_SECONDS", default=10.0)

# --- Prices ---
# "pyth" (Hermes) or "fixed" (SANDBOX_PRICES_USD); sandbox mode defaults to fixed prices.
PRICE_SOURCE = env.str("PRICE_SOURCE", default="") or ("pyth" if IS_LIVE else "fixed")
if PRICE_SOURCE not in ("pyth", "fixed"):
    raise environ.ImproperlyConfigured("PRICE_SOURCE must be 'pyth' or 'fixed'")
PYTH_HERMES_URL = env.str("PYTH_HERMES_URL", default="https://hermes.pyth.network")
PYTH_API_KEY = env.str("PYTH_API_KEY", default="")
PRICE_MAX_AGE_SECONDS = env.int("PRICE_MAX_AGE_SECONDS", default=60)
PRICE_MAX_CONFIDENCE_RATIO = env.float("PRICE_MAX_CONFIDENCE_RATIO", default=0.02)
PRICE_CACHE_SECONDS = env.float("PRICE_CACHE_SECONDS", default=1.0)
# Sandbox prices in USD, reported as source "fixed" on every quote.
SANDBOX_PRICES_USD = {
    "SOL": env.str("SANDBOX_PRICE_SOL_USD", default="150.00"),
    "XLM": env.str("SANDBOX_PRICE_XLM_USD", default="0.10"),
    "NEAR": env.str("SANDBOX_PRICE_NEAR_USD", default="3.00"),
    "USDC": env.str("SANDBOX_PRICE_USDC_USD", default="1.00"),
}

# --- Quotes ---
SERVICE_FEE_RATE = Decimal(env.str("SERVICE_FEE_RATE", default="0.001"))
QUOTE_SAFETY_BUFFER_RATE = Decimal(env.str("QUOTE_SAFETY_BUFFER_RATE", default="0.005"))
QUOTE_TTL_SECONDS = env.int("QUOTE_TTL_SECONDS", default=300)
QUOTE_SIGNING_KEY = env.str("QUOTE_SIGNING_KEY",
                            default=_identity.get("quote_signing_key_hex", ""))

# --- Risk (seed names; whole SOL / XLM / NEAR) ---
SOLANA_DAILY_LIMIT = Decimal(env.str("SOLANA_DAILY_LIMIT", default="100"))
STELLAR_DAILY_LIMIT = Decimal(env.str("STELLAR_DAILY_LIMIT", default="1000000"))
NEAR_DAILY_LIMIT = Decimal(env.str("NEAR_DAILY_LIMIT", default="10000"))
USER_DAILY_LIMIT_SOL = Decimal(env.str("USER_DAILY_LIMIT_SOL", default="20"))
PER_TRANSACTION_LIMIT_SOL = Decimal(env.str("PER_TRANSACTION_LIMIT_SOL", default="10"))
CIRCUIT_BREAKER_ENABLED = env.bool("CIRCUIT_BREAKER_ENABLED", default=True)
HOURLY_OUTFLOW_THRESHOLD = Decimal(env.str("HOURLY_OUTFLOW_THRESHOLD", default="0.20"))
CONSECUTIVE_FAILURE_THRESHOLD = env.int("CONSECUTIVE_FAILURE_THRESHOLD", default=5)
VOLUME_SPIKE_RATIO = Decimal(env.str("VOLUME_SPIKE_RATIO", default="2.0"))
VOLUME_SPIKE_FLOOR = env.int("VOLUME_SPIKE_FLOOR", default=100)
# Each process re-counts quote volume at most this often (keeps the quote hot path cheap).
VOLUME_CHECK_INTERVAL_SECONDS = env.float("VOLUME_CHECK_INTERVAL_SECONDS", default=10.0)
WITHDRAWAL_APPROVAL_THRESHOLD_USD = Decimal(
    env.str("WITHDRAWAL_APPROVAL_THRESHOLD_USD", default="1000")
)
# A single withdrawal above this (USD, by the oracle) is refused outright.
WITHDRAWAL_MAX_USD = Decimal(env.str("WITHDRAWAL_MAX_USD", default="50000"))

# --- Wallet sign-in: the name in challenge messages and the NEP-413 `recipient` ---
AUTH_SERVICE_NAME = env.str("AUTH_SERVICE_NAME", default="solpay")

# --- Webhooks and alerts ---
WEBHOOK_SECRET = env.str("WEBHOOK_SECRET", default="")
if not WEBHOOK_SECRET and not IS_LIVE:
    WEBHOOK_SECRET = "sandbox-webhook-" + hashlib.sha256(SECRET_KEY.encode()).hexdigest()[:32]
WEBHOOK_TOLERANCE_SECONDS = env.int("WEBHOOK_TOLERANCE_SECONDS", default=300)
ALERT_WEBHOOK_URL = env.str("ALERT_WEBHOOK_URL", default="")

# --- Operators ---
ADMIN_OTP_REQUIRED = env.bool("ADMIN_OTP_REQUIRED", default=IS_LIVE)
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="solpay admin")
# An enrolled authenticator's secret is shown once, at enrolment, never again in admin.
OTP_ADMIN_HIDE_SENSITIVE_DATA = True
SETTLEMENT_STUCK_AFTER_SECONDS = env.int("SETTLEMENT_STUCK_AFTER_SECONDS", default=3600)
# Addresses or CIDR networks allowed to scrape /metrics; METRICS_TOKEN adds a bearer check.
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])

# --- Logging: one JSON object per line, request id and quote id attached. ---
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "config.logging.ContextFilter"}},
    "formatters": {"json": {"()": "config.logging.JsonFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json",
                    "filters": ["context"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # django-q2 logs as "django-q" (with a hyphen).
        "django-q": {"level": env.str("Q_LOG_LEVEL", default="WARNING")},
        # Warns on every publish to a group nobody watches right now: normal for us.
        "channels_postgres": {"level": "ERROR"},
        "daphne": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
    },
}

# --- Operator account created by `make run` (Django's standard names) ---
DJANGO_SUPERUSER_USERNAME = env.str("DJANGO_SUPERUSER_USERNAME", default="")
DJANGO_SUPERUSER_PASSWORD = env.str("DJANGO_SUPERUSER_PASSWORD", default="")
