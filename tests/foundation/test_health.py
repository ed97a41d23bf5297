import pytest

from risk.models import CircuitBreaker


@pytest.mark.django_db
def test_health_is_healthy_with_breaker_closed(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "healthy", "circuit_breaker_active": False}


@pytest.mark.django_db
def test_health_is_degraded_with_breaker_open(client):
    from django.utils import timezone
    CircuitBreaker.objects.filter(pk=1).update(is_open=True, opened_at=timezone.now(), reason="x")
    response = client.get("/health")
    assert response.json() == {"status": "degraded", "circuit_breaker_active": True}


@pytest.mark.django_db
def test_ready_reports_database_and_queue(client):
    body = client.get("/ready").json()
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["task_queue"]["ok"] is True
