"""Refusals raised while quoting, with the API's error codes (DESIGN.md §6)."""

from __future__ import annotations

from config.errors import NotFound, ServiceError, Unavailable


class InvalidQuoteParameters(ServiceError):
    """The Solana work or the request cannot be quoted as given (nothing is written)."""

    code, status = "INVALID_QUOTE_PARAMETERS", 400
    default_message = "Invalid quote parameters"


class ProgramNotAllowed(ServiceError):
    """An instruction calls a program (or a program instruction) outside the allow-list."""

    code, status = "PROGRAM_NOT_ALLOWED", 400
    default_message = "The transaction calls a program that is not allowed"


class PriceUnavailable(Unavailable):
    """No fresh, tight enough oracle price: quoting now would guess."""

    code, status = "PRICE_UNAVAILABLE", 503
    default_message = "No reliable price is available right now"


class QuoteNotFound(NotFound):
    code = "QUOTE_NOT_FOUND"
    default_message = "Quote not found"


class QuoteNotPending(ServiceError):
    code, status = "QUOTE_NOT_PENDING", 409
    default_message = "Only a pending quote can be cancelled"
