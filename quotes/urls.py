"""Quote routes: the v1 API, chart candles, and the seed's /quote and /status/{id}."""

from django.urls import URLPattern, URLResolver, path

from quotes import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("api/v1/quotes", views.QuotesView.as_view(), name="quotes"),
    # str, not uuid: a malformed id answers QUOTE_NOT_FOUND like any id that isn't yours.
    path("api/v1/quotes/<str:quote_id>", views.QuoteDetailView.as_view(), name="quote-detail"),
    path("api/v1/quotes/<str:quote_id>/cancel", views.QuoteCancelView.as_view(),
         name="quote-cancel"),
    path("api/v1/prices/<str:pair>/ohlc", views.PriceCandlesView.as_view(), name="price-ohlc"),
    path("quote", views.SeedQuoteView.as_view(), name="seed-quote"),
    path("status/<str:quote_id>", views.SeedStatusView.as_view(), name="seed-status"),
]
