"""URL map: public API under /api/v1/, seed-compatible routes, ops endpoints, admin."""

from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

import config.api_docs  # noqa: F401  (registers the bearer-token security scheme)
from config import views
from config.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health", views.health, name="health"),
    path("ready", views.ready, name="ready"),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema",
                                                    template_name="api_docs/redoc.html"),
         name="api-redoc"),
    # Static files (admin, Swagger UI/Redoc from drf-spectacular-sidecar) straight from the
    # app directories: daphne serves no static files and nothing may come from a CDN.
    re_path(r"^static/(?P<path>.*)$", serve_static, {"insecure": True}),
]

# Errors outside DRF (unknown URLs, plain views) answer with the JSON envelope.
handler400 = "config.errors.handler400"
handler403 = "config.errors.handler403"
handler404 = "config.errors.handler404"
handler500 = "config.errors.handler500"

# Each app contributes its API routes (api/v1/...) and seed-compatible routes.
urlpatterns += [
    path("", include("users.urls")),
    path("", include("quotes.urls")),
    path("", include("execution.urls")),
    path("", include("settlement.urls")),
    path("", include("settlement.urls_balances")),
    path("", include("risk.urls")),
]
