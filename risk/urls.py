"""Public treasury document and operator circuit-breaker routes."""

from django.urls import URLPattern, URLResolver, path

from risk import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("api/v1/treasury", views.TreasuryView.as_view(), name="treasury"),
    path("api/v1/ops/breaker/reset", views.BreakerResetView.as_view(), name="ops-breaker-reset"),
    path("api/v1/ops/breaker/trip", views.BreakerTripView.as_view(), name="ops-breaker-trip"),
]
