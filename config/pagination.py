"""Pagination for list endpoints: `?limit=&offset=`, bounded so no query can ask for too much.

The default class (settings DEFAULT_PAGINATION_CLASS). DRF's LimitOffsetPagination has no
maximum page size and no bound on offset; an offset beyond PostgreSQL's bigint (a fuzzer's
favourite) would fail in the database as a 500. Here the page size is capped and an
absurd offset is a 400 INVALID_REQUEST.

On a plain APIView:

    paginator = ApiPagination()
    page = paginator.paginate_queryset(queryset, request, view=self)
    return paginator.get_paginated_response(QuoteOutput(page, many=True).data)

and document it with `config.api_docs.paginated(QuoteOutput)` + `PAGINATION_PARAMETERS`.
"""

from __future__ import annotations

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

MAX_OFFSET = 10**9


class ApiPagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 200

    def get_offset(self, request: Request) -> int:
        raw = request.query_params.get(self.offset_query_param)
        digits = (raw or "").strip()
        if digits.isdigit() and (len(digits) > len(str(MAX_OFFSET)) or int(digits) > MAX_OFFSET):
            raise ValidationError({self.offset_query_param: [f"Must be at most {MAX_OFFSET}."]})
        return super().get_offset(request)
