"""WebSocket routes. Consumers authenticate themselves (token in query or subprotocol)."""

from django.urls import path

from quotes.consumers import MeConsumer, QuoteConsumer

websocket_urlpatterns = [
    path("ws/quotes/<uuid:quote_id>/", QuoteConsumer.as_asgi()),
    path("ws/me/", MeConsumer.as_asgi()),
]
