from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from .messages import UNSUBSCRIBE_SALT
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
