"""The project's URLs plus `/__screens_login/<token>/?next=/admin/...`: signs the demo
operator in when the token equals SCREENS_LOGIN_TOKEN (set per run by take.py)."""

import hmac
import os

from django.contrib.auth import login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path

from config.urls import urlpatterns as project_urlpatterns
from users.models import User


def screens_login(request: HttpRequest, token: str) -> HttpResponse:
    expected = os.environ.get("SCREENS_LOGIN_TOKEN", "")
    if not expected or not hmac.compare_digest(token, expected):
        raise Http404
    login(request, User.objects.get(username="ops-alice"),
          backend="django.contrib.auth.backends.ModelBackend")
    target = request.GET.get("next", "/admin/")
    return HttpResponseRedirect(target if target.startswith("/admin/") else "/admin/")


urlpatterns = [path("__screens_login/<str:token>/", screens_login), *project_urlpatterns]
