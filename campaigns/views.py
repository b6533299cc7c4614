from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from .messages import UNSUBSCRIBE_SALT
from .preferences import (
    contact_lists,
    contact_unsubscribe_all,
    preferences_contact,
    subscriptions_keep,
)
from .services import contact_unsubscribe


@csrf_exempt  # RFC 8058 one-click POSTs come from mailbox providers, without a form.
def unsubscribe(request: HttpRequest, signed: str) -> HttpResponse:
    try:
        token = signing.loads(signed, salt=UNSUBSCRIBE_SALT)
    except signing.BadSignature:
        return render(request, "campaigns/unsubscribe.html", {"invalid": True}, status=404)
    if request.method == "POST":
        email = contact_unsubscribe(
            token=token, source="one-click" if "List-Unsubscribe" in request.POST else "link"
        )
        if email is None:
            return render(request, "campaigns/unsubscribe.html", {"invalid": True}, status=404)
        return render(request, "campaigns/unsubscribe.html", {"done": True, "email": email})
    return render(request, "campaigns/unsubscribe.html", {"signed": signed})


# No CSRF token: the page needs no cookie of any kind, and the signed URL
# is itself the secret a forged cross-site form would have to know.
@csrf_exempt
def preferences(request: HttpRequest, signed: str) -> HttpResponse:
    """Manage subscriptions, from the footer link: no login."""
    contact = preferences_contact(signed=signed)
    if contact is None:
        return render(request, "campaigns/preferences.html", {"invalid": True}, status=404)
    context: dict[str, object] = {"contact": contact}
    if request.method == "POST":
        if "unsubscribe_all" in request.POST:
            contact_unsubscribe_all(contact=contact)
            context["all_done"] = True
        else:
            keep = {int(v) for v in request.POST.getlist("list") if v.isdigit()}
            context["left"], context["rejoined"] = subscriptions_keep(
                contact=contact, list_ids=keep
            )
            context["saved"] = True
        contact.refresh_from_db()
    context["lists"] = contact_lists(contact=contact)
    return render(request, "campaigns/preferences.html", context)
