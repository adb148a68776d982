"""Optional middleware: answer "NATS unavailable" errors with 503 JSON instead of a 500 page."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from .. import _web

log: logging.Logger = logging.getLogger("natsync")


class NatsUnavailableMiddleware:
    """Turn an error meaning "NATS cannot serve this now" into HTTP 503 with a JSON body.

    Add ``"natsync.django.middleware.NatsUnavailableMiddleware"`` to ``MIDDLEWARE``.  The
    errors are :data:`natsync._web.UNAVAILABLE_ERRORS` (not connected, no responders, a
    timeout, ...); the body is ``{"error": "NATS unavailable", "detail": "..."}``, with no
    server address in it unless ``NATSYNC_SHOW_SERVER`` is true.  Other exceptions are
    left to Django.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Answer an unavailable-NATS error with 503; leave anything else alone."""
        if not isinstance(exception, _web.UNAVAILABLE_ERRORS):
            return None
        from . import show_server

        log.warning(
            "NATS unavailable while handling %s %s: %s",
            request.method,
            request.path,
            _web._describe(exception),
        )
        return JsonResponse(_web.unavailable_body(exception, show_server()), status=503)
