"""Which requests are the admin's (a signed-in browser) and not the API's: the admin keeps
its HTML error pages and CORS does not apply to it (config.errors, config.middleware), and
only its requests run the browser-only middleware (config.serving). Django admin is
mounted at this prefix in config/urls.py."""

from __future__ import annotations

ADMIN_PATH_PREFIX = "/admin/"


def is_admin_path(path: str) -> bool:
    return path.startswith(ADMIN_PATH_PREFIX)
