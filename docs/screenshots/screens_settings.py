"""Settings for taking the README's admin screenshots (docs/screenshots/take.py) only.

The project's settings plus a URLconf with a one-time sign-in link for headless Chromium,
which cannot type a password. Never used by the service itself.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "screens_urls"
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
ADMIN_OTP_REQUIRED = False
