"""The OAuth 2.0 callback: where Microsoft and Google send the browser back."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from .oauth import OAuthError, OAuthStateError, oauth_flow_finish


@require_GET
@staff_member_required
def oauth_callback(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm("smtpservers.change_smtpserver"):
        raise PermissionDenied
    try:
        server = oauth_flow_finish(session=request.session, params=request.GET.dict())
    except OAuthStateError as exc:
        return render(request, "smtpservers/oauth_refused.html", {"message": str(exc)}, status=400)
    except OAuthError as exc:
        messages.error(request, f"No tokens were stored: {exc}")
        return HttpResponseRedirect(reverse("admin:smtpservers_smtpserver_changelist"))
    expires = timezone.localtime(server.oauth_expires_at)
    messages.success(
        request,
        f"New OAuth 2.0 tokens are stored for “{server.name}”. The access token is "
        f"refreshed automatically before it expires ({expires:%Y-%m-%d %H:%M}).",
    )
    return HttpResponseRedirect(reverse("admin:smtpservers_smtpserver_change", args=[server.pk]))
