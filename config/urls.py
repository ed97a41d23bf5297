"""URL map: public API under /api/v1/, seed-compatible routes, ops endpoints, admin."""

from django.contrib import admin
from django.urls import include, path

from config import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health", views.health, name="health"),
    path("ready", views.ready, name="ready"),
]

# Each app contributes its API routes (api/v1/...) and seed-compatible routes.
urlpatterns += [
    path("", include("users.urls")),
    path("", include("quotes.urls")),
    path("", include("execution.urls")),
    path("", include("settlement.urls")),
    path("", include("risk.urls")),
]
