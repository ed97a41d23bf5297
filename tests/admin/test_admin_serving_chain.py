"""config.serving runs the browser-only middleware (session, CSRF, the session's user,
two-factor, messages) for the admin's paths only: the admin still signs in with a session
and is still CSRF-protected, and API requests go through the chain without them.

Requests go through `BrowserScopedHandler`, the handler `make run`'s web processes use,
with the raw headers daphne delivers."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie
from typing import Any

import pytest
from django.conf import settings
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware

from config.serving import BrowserScopedHandler
from tests.serving_requests import serve_through

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("handler_keeps_the_test_connection")]

PASSWORD = "correct horse battery staple"


class Browser:
    """Cookies kept between requests, as a browser keeps them."""

    def __init__(self) -> None:
        self.handler = BrowserScopedHandler()
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
        raw = [(b"host", b"testserver")]
        raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
        if self.cookies:
            raw.append((b"cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items()).encode()))
        if body:
            raw.append((b"content-type", b"application/x-www-form-urlencoded"))
        status, response_headers, content = serve_through(self.handler, method, path, raw, body)
        for name, value in response_headers:
            if name.lower() == "set-cookie":
                for morsel in SimpleCookie(value).values():
                    self.cookies[morsel.key] = morsel.value
        return status, response_headers, content


def _csrf_token(page: bytes) -> str:
    match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, "the login form carries no CSRF token"
    return match.group(1).decode()


def test_the_admin_still_signs_in_with_a_session_and_refuses_a_post_without_csrf(operator):
    operator.set_password(PASSWORD)
    operator.save()
    browser = Browser()

    status, _, page = browser.request("GET", "/admin/login/")
    assert status == 200
    assert "csrftoken" in browser.cookies  # CsrfViewMiddleware ran

    form = f"username={operator.username}&password={PASSWORD.replace(' ', '+')}&next=/admin/"
    status, _, _ = browser.request("POST", "/admin/login/", form.encode())
    assert status == 403  # no CSRF token in the form: refused
    assert "sessionid" not in browser.cookies

    token = _csrf_token(page)
    status, headers, _ = browser.request(
        "POST", "/admin/login/", f"{form}&csrfmiddlewaretoken={token}".encode())
    assert status == 302, headers
    assert "sessionid" in browser.cookies  # SessionMiddleware + auth ran

    status, _, page = browser.request("GET", "/admin/")
    assert status == 200
    assert operator.username.encode() in page  # the session's user, through the middleware


def test_api_requests_skip_the_browser_only_middleware(monkeypatch, operator):
    ran: list[str] = []
    for middleware in (SessionMiddleware, MessageMiddleware):
        original = middleware.process_request

        def spy(self, request, _original=original, _name=middleware.__name__):
            ran.append(_name)
            return _original(self, request)

        monkeypatch.setattr(middleware, "process_request", spy)
    browser = Browser()

    status, headers, _ = browser.request("GET", "/api/v1/treasury")
    assert status == 200
    assert ran == []
    assert not [name for name, _ in headers if name.lower() == "set-cookie"]

    status, _, _ = browser.request("GET", "/admin/login/")
    assert status == 200
    assert ran == ["SessionMiddleware", "MessageMiddleware"]


def test_a_session_cookie_signs_no_one_in_on_the_api(operator):
    """Why the API needs no CSRF check: without the session middleware, an admin's
    session cookie is just a string to it."""
    operator.set_password(PASSWORD)
    operator.save()
    browser = Browser()
    _, _, page = browser.request("GET", "/admin/login/")
    form = (f"username={operator.username}&password={PASSWORD.replace(' ', '+')}"
            f"&csrfmiddlewaretoken={_csrf_token(page)}")
    assert browser.request("POST", "/admin/login/", form.encode())[0] == 302

    status, _, body = browser.request("GET", "/api/v1/quotes")
    assert status == 401, body


def test_the_api_chain_is_the_full_one_less_the_browser_only_middleware_in_order():
    handler = BrowserScopedHandler()
    assert set(settings.BROWSER_ONLY_MIDDLEWARE) <= set(settings.MIDDLEWARE)

    def chain(wsgi_handler: Any) -> list[str]:
        names, layer = [], wsgi_handler._middleware_chain
        while hasattr(layer, "get_response") or hasattr(layer, "__wrapped__"):
            inner = getattr(layer, "__wrapped__", None)
            if inner is None:
                names.append(f"{type(layer).__module__}.{type(layer).__name__}")
                inner = layer.get_response
            layer = inner
        return names

    expected = [m for m in settings.MIDDLEWARE if m not in settings.BROWSER_ONLY_MIDDLEWARE]
    assert chain(handler.api) == expected
    assert chain(handler.browser) == list(settings.MIDDLEWARE)
