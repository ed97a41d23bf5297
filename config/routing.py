"""WebSocket routes. Consumers authenticate themselves (token in query or subprotocol)."""

from django.urls import URLPattern

websocket_urlpatterns: list[URLPattern] = []
