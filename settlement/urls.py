from django.urls import URLPattern, URLResolver, path

from settlement import views

urlpatterns: list[URLPattern | URLResolver] = [
    # str, not uuid: a malformed id answers QUOTE_NOT_FOUND like any id that isn't yours.
    path("api/v1/quotes/<str:quote_id>/payment", views.QuotePaymentView.as_view(),
         name="quote-payment"),
    path("api/v1/webhooks/stellar", views.StellarWebhookView.as_view(), name="webhook-stellar"),
    path("api/v1/webhooks/near", views.NearWebhookView.as_view(), name="webhook-near"),
    # Seed-compatible routes: same views, same rules.
    path("commit", views.CommitView.as_view(), name="seed-commit"),
    path("webhook/stellar", views.StellarWebhookView.as_view(), name="seed-webhook-stellar"),
    path("webhook/near", views.NearWebhookView.as_view(), name="seed-webhook-near"),
]
