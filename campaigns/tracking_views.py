"""Public tracking endpoints: the open pixel and the click redirect."""

from __future__ import annotations

import base64

from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from .tracking import is_machine, tracking_record_click, tracking_record_open

# The smallest transparent GIF (43 bytes).
_PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _machine(request: HttpRequest) -> bool:
    return is_machine(
        user_agent=request.headers.get("User-Agent", ""),
        address=request.META.get("REMOTE_ADDR", ""),
        method=request.method or "GET",
    )


@never_cache  # every open must reach us, not a cache
@require_http_methods(["GET", "HEAD"])
def open_pixel(request: HttpRequest, key: str) -> HttpResponse:
    # The image is served whatever the key: a mail client shows no broken image.
    tracking_record_open(
        key=key, user_agent=request.headers.get("User-Agent", ""), machine=_machine(request)
    )
    return HttpResponse(_PIXEL, content_type="image/gif")


@never_cache
@require_http_methods(["GET", "HEAD"])
def click(request: HttpRequest, key: str, link_id: int) -> HttpResponse:
    destination = tracking_record_click(
        key=key,
        link_id=link_id,
        user_agent=request.headers.get("User-Agent", ""),
        machine=_machine(request),
    )
    if destination is None:
        raise Http404("This link is not valid.")
    return HttpResponseRedirect(destination)
