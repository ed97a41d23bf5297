"""ASGI entry point: HTTP through Django, WebSockets through Channels (daphne)."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from config.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(websocket_urlpatterns),
    }
)

# Keep the ~175k objects loaded at start-up out of every full GC pass: with 1,000 sockets
# a full pass took 400-600 ms and stalled every frame behind it (bench/ws.py).
gc.freeze()
