"""Wallet sign-in and profile routes."""

from django.urls import URLPattern, URLResolver, path

from users import views

urlpatterns: list[URLPattern | URLResolver] = [
    path("api/v1/auth/challenge", views.ChallengeView.as_view(), name="auth-challenge"),
    path("api/v1/auth/verify", views.VerifyView.as_view(), name="auth-verify"),
    path("api/v1/auth/logout", views.LogoutView.as_view(), name="auth-logout"),
    path("api/v1/me", views.MeView.as_view(), name="me"),
]
