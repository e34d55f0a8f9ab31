"""ASGI entry point: HTTP through Django, websockets through Channels (session auth, origin check)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "grokweb.settings.base")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from chat.routing import websocket_urlpatterns  # noqa: E402
from grokweb import websocket_protocol  # noqa: E402

websocket_protocol.install()  # too large and non-UTF-8 frames answered, not dropped

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Exact origins (scheme, host and port), not ALLOWED_HOSTS: another port on the same host
        # is another site (docs/protocol.md).
        "websocket": OriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns)), settings.GROKWEB_PUBLIC_ORIGINS
        ),
    }
)
