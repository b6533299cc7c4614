"""The OAuth 2.0 callback (where Microsoft and Google send the browser back)
and each user's personal outbound server."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from .forms import PersonalServerForm
from .oauth import OAuthError, OAuthStateError, oauth_flow_finish, oauth_flow_model
from .services import personal_server_for, personal_server_set, personal_servers_offered


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


@login_required
def personal_server(request: HttpRequest) -> HttpResponse:
    """My outbound server: the SMTP server for the test sends I make."""
    current = personal_server_for(user=request.user)
    offered = personal_servers_offered()
    form = PersonalServerForm(
        request.POST or None, queryset=offered, initial={"smtp_server": current}
    )
    if request.method == "POST" and form.is_valid():
        chosen = form.cleaned_data["smtp_server"]
        personal_server_set(user=request.user, server=chosen)
        if chosen is None:
            messages.success(request, "Your test sends use the dispatcher's server.")
        else:
            messages.success(request, f"Your test sends go through “{chosen.name}”.")
        return HttpResponseRedirect(reverse("smtpservers:personal"))
    context = {
        **admin.site.each_context(request),
        "title": "My outbound server",
        "form": form,
        "current": current,
        "offered": offered.exists(),
    }
    status = 400 if form.is_bound else 200
    return render(request, "smtpservers/personal_server.html", context, status=status)
