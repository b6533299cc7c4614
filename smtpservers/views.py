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

from .oauth import OAuthError, OAuthStateError, oauth_flow_finish, oauth_flow_model


@require_GET
@staff_member_required
def oauth_callback(request: HttpRequest) -> HttpResponse:
    # The flow may be for an SMTP server or a bounce mailbox: the right to
    # change that kind of row is checked before anything is stored.
    app_label, _, model_name = oauth_flow_model(
        session=request.session, state=request.GET.get("state", "")
    ).partition(".")
    if not request.user.has_perm(f"{app_label}.change_{model_name}"):
        raise PermissionDenied
    try:
        server = oauth_flow_finish(session=request.session, params=request.GET.dict())
    except OAuthStateError as exc:
        return render(request, "smtpservers/oauth_refused.html", {"message": str(exc)}, status=400)
    except OAuthError as exc:
        messages.error(request, f"No tokens were stored: {exc}")
        return HttpResponseRedirect(reverse(f"admin:{app_label}_{model_name}_changelist"))
    expires = timezone.localtime(server.oauth_expires_at)
    messages.success(
        request,
        f"New OAuth 2.0 tokens are stored for “{server.name}”. The access token is "
        f"refreshed automatically before it expires ({expires:%Y-%m-%d %H:%M}).",
    )
    meta = server._meta
    return HttpResponseRedirect(
        reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[server.pk])
    )
