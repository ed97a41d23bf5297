"""Routes of the prepaid balance API (included from config/urls.py)."""

from django.urls import URLPattern, URLResolver, path

from settlement import views_balances as views

urlpatterns: list[URLPattern | URLResolver] = [
    path("api/v1/balances", views.BalancesView.as_view(), name="balances"),
    path("api/v1/balances/history", views.BalanceHistoryView.as_view(), name="balances-history"),
    path("api/v1/withdrawals", views.WithdrawalsView.as_view(), name="withdrawals"),
    # str, not uuid: a malformed id answers WITHDRAWAL_NOT_FOUND like any id that isn't yours.
    path("api/v1/withdrawals/<str:withdrawal_id>", views.WithdrawalDetailView.as_view(),
         name="withdrawal-detail"),
    path("api/v1/quotes/<str:quote_id>/pay-from-balance", views.QuotePayFromBalanceView.as_view(),
         name="quote-pay-from-balance"),
]
