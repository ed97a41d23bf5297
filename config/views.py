"""Health, readiness and metrics: what load balancers and SREs poll."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from config import readiness


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Liveness plus the breaker: `degraded` while the circuit breaker is open."""
    from risk.selectors import breaker_is_open

    try:
        breaker_open = breaker_is_open()
    except Exception:  # the database being down is exactly what health must report
        return JsonResponse({"status": "unhealthy", "circuit_breaker_active": None,
                             "database": "down"}, status=503)
    return JsonResponse({
        "status": "degraded" if breaker_open else "healthy",
        "circuit_breaker_active": breaker_open,
    })


@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    checks = readiness.run_checks()
    ok = all(c["ok"] for c in checks.values())
    return JsonResponse({"ready": ok, "checks": checks}, status=200 if ok else 503)


def database_ok() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone() == (1,)
