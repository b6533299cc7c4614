"""Twilio's status callbacks: public (Twilio has no session or CSRF
token), so each request must carry Twilio's signature, made with the
dispatcher's auth token over the exact callback URL Herald gave."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from dispatchers.models import Dispatcher

from .sms import sms_status_record, twilio_signature_valid


@csrf_exempt
@require_POST
def twilio_status(request: HttpRequest, dispatcher_id: int) -> HttpResponse:
    dispatcher = Dispatcher.objects.filter(pk=dispatcher_id, type=Dispatcher.Type.SMS).first()
    # The URL as Herald gave it to Twilio (HERALD_PUBLIC_URL), not as this
    # process sees it behind a proxy: Twilio signed that one.
    url = settings.HERALD_PUBLIC_URL + request.get_full_path()
    signature = request.headers.get("X-Twilio-Signature", "")
    if dispatcher is None or not twilio_signature_valid(
        dispatcher=dispatcher, url=url, params=request.POST, signature=signature
    ):
        return HttpResponseForbidden("Invalid or missing X-Twilio-Signature.")
    sms_status_record(
        dispatcher_id=dispatcher.pk,
        sid=request.POST.get("MessageSid", ""),
        status=request.POST.get("MessageStatus", ""),
        error_code=request.POST.get("ErrorCode", ""),
    )
    # 200 even for a message Herald does not know: Twilio has nothing to retry.
    return HttpResponse(status=200)
