"""The quote views' content negotiation answers exactly as DRF's own does.

`PlainAcceptNegotiation` skips DRF's media-type parsing for the usual request; for every
Accept header, query string, format suffix and renderer list below it must pick the same
renderer and media type as `DefaultContentNegotiation`, or refuse the same way."""

from __future__ import annotations

import itertools

import pytest
from django.http import Http404
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer, StaticHTMLRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from quotes.views import PlainAcceptNegotiation, QuotesView, SeedQuoteView


class IndentedJson(JSONRenderer):
    media_type = "application/json; indent=4"


ACCEPTS = [None, "*/*", " */* ", "application/json", "application/json; indent=2",
           "text/html", "application/*", "*/*;q=0.8", "text/html, */*", "Application/JSON", "",
           "application/json; indent=4"]
QUERIES = ["", "format=json", "format=api", "other=1"]
SUFFIXES = [None, "json", "api"]
RENDERER_SETS = [[JSONRenderer], [JSONRenderer, BrowsableAPIRenderer],
                 [StaticHTMLRenderer, JSONRenderer], [IndentedJson]]


def outcome(negotiator, accept, query, suffix, renderer_classes):
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = Request(APIRequestFactory().post(f"/api/v1/quotes?{query}" if query
                                               else "/api/v1/quotes", **headers))
    renderers = [cls() for cls in renderer_classes]
    try:
        renderer, media_type = negotiator.select_renderer(request, renderers, suffix)
    except (NotAcceptable, Http404) as exc:
        return type(exc).__name__
    return renderers.index(renderer), media_type


@pytest.mark.parametrize(("accept", "query", "suffix", "renderers"),
                         list(itertools.product(ACCEPTS, QUERIES, SUFFIXES, RENDERER_SETS)))
def test_the_same_choice_as_drf(accept, query, suffix, renderers):
    assert (outcome(PlainAcceptNegotiation(), accept, query, suffix, renderers)
            == outcome(DefaultContentNegotiation(), accept, query, suffix, renderers))


def test_the_quote_creating_views_use_it():
    assert QuotesView.content_negotiation_class is PlainAcceptNegotiation
    assert SeedQuoteView.content_negotiation_class is PlainAcceptNegotiation
