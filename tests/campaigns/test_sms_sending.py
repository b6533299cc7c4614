"""SMS campaigns sent through the whole pipeline to a local stand-in for
Twilio's Messages API, and Twilio's status callbacks coming back."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
from django.test import Client

from campaigns import services
from campaigns.models import Campaign, CampaignItem, Contact, ContactList, Subscription, Suppression
from dispatchers.models import Dispatcher
from dispatchers.transports.twilio import TwilioTransport
from jobs.models import Notification
from tests.helpers import make_campaign, make_dispatcher, make_template
from tests.twilio import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FROM_NUMBER,
    INVALID_TO,
    FakeTwilio,
    TwilioServer,
    callback_params,
    error_body,
    twilio_signature,
)

pytestmark = pytest.mark.django_db
S = CampaignItem.Status
PUBLIC_URL = "https://herald.example.org"


@pytest.fixture
def twilio(settings) -> Iterator[FakeTwilio]:
    with TwilioServer() as fake:
        settings.HERALD_TWILIO_API_URL = fake.url
        settings.HERALD_PUBLIC_URL = PUBLIC_URL
        settings.HERALD_SMS_DEFAULT_REGION = "GB"
        yield fake


def sms_dispatcher(**extra: object) -> Dispatcher:
    fields: dict[str, object] = {
        "type": Dispatcher.Type.SMS,
        "from_email": "",
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_auth_token": AUTH_TOKEN,
        "sms_from_number": FROM_NUMBER,
    }
    fields.update(extra)
    return make_dispatcher(**fields)


def audience(phones: dict[str, str]) -> ContactList:
    """One contact per name: email <name>@example.org, the phone given."""
    contact_list = ContactList.objects.create(name="SMS list")
    for name, phone in phones.items():
        contact = Contact.objects.create(
            email=f"{name}@example.org", first_name=name.title(), phone=phone
        )
        Subscription.objects.create(contact=contact, contact_list=contact_list)
    return contact_list


def start(dispatcher: Dispatcher, phones: dict[str, str]) -> Campaign:
    template = make_template(sms_body="Hi {{ contact.first_name }}, doors open at 9. Reply STOP")
    campaign = make_campaign(
        dispatcher=dispatcher,
        lists=[audience(phones)],
        template=template,
        status=Campaign.Status.SCHEDULED,
    )
    services.items_generate()
    return campaign


def send_everything(dispatcher: Dispatcher) -> None:
    while (batch := services.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
        services.batch_send(batch_id=batch.pk)


def item_of(campaign: Campaign, name: str) -> CampaignItem:
    return CampaignItem.objects.get(campaign=campaign, contact__email=f"{name}@example.org")


def test_an_sms_campaign_is_sent_through_twilio_end_to_end(twilio: FakeTwilio) -> None:
    dispatcher = sms_dispatcher()
    campaign = start(
        dispatcher,
        {
            "ann": "+1 415 555 0100",
            "bob": "020 7946 0000",  # national: the default region (GB)
            "cy": "+44 20 7946 0001",
            "dee": "+1 555 123 4567",  # no such US area code
            "eve": "",
            "fay": "+33 6 12 34 56 78",  # suppressed by number
            "gus": INVALID_TO,  # Twilio refuses it (21211)
        },
    )
    Suppression.objects.create(pattern="+33612345678", source=Suppression.Source.UNSUBSCRIBE)

    send_everything(dispatcher)

    callback = f"{PUBLIC_URL}/sms/status/{dispatcher.pk}/"
    assert [(m["To"], m["From"], m["Body"], m["StatusCallback"]) for m in twilio.messages] == [
        ("+14155550100", FROM_NUMBER, "Hi Ann, doors open at 9. Reply STOP", callback),
        ("+442079460000", FROM_NUMBER, "Hi Bob, doors open at 9. Reply STOP", callback),
        ("+442079460001", FROM_NUMBER, "Hi Cy, doors open at 9. Reply STOP", callback),
    ]
    ann = item_of(campaign, "ann")
    assert (ann.status, ann.queue_id, ann.provider_status) == (
        S.SENT,
        twilio.messages[0]["Sid"],
        "queued",
    )
    dee = item_of(campaign, "dee")
    assert (dee.status, dee.smtp_response) == (
        S.FAILED,
        "Invalid phone number '+1 555 123 4567': not a valid number for US (+1).",
    )
    eve, fay = item_of(campaign, "eve"), item_of(campaign, "fay")
    assert (eve.status, eve.skip_reason) == (S.SKIPPED, "no phone number")
    assert (fay.status, fay.skip_reason) == (S.SKIPPED, "suppressed")
    gus = item_of(campaign, "gus")
    assert (gus.status, gus.smtp_code, gus.smtp_response) == (
        S.FAILED,
        400,
        f"Twilio error 21211: The 'To' number {INVALID_TO} is not a valid phone number.",
    )
    assert services.campaigns_complete() == 1
    campaign.refresh_from_db()
    assert (campaign.sent_count, campaign.failed_count, campaign.skipped_count) == (3, 2, 2)


def test_a_messaging_service_sends_when_there_is_no_from_number(twilio: FakeTwilio) -> None:
    service_sid = "MG" + "ab" * 16
    dispatcher = sms_dispatcher(sms_from_number="", twilio_messaging_service_sid=service_sid)
    campaign = start(dispatcher, {"ann": "+1 415 555 0100"})

    send_everything(dispatcher)

    assert twilio.messages[0]["MessagingServiceSid"] == service_sid
    assert "From" not in twilio.messages[0]
    assert item_of(campaign, "ann").provider_status == "accepted"


def test_a_recipient_who_replied_stop_is_suppressed_for_later_campaigns(
    twilio: FakeTwilio,
) -> None:
    twilio.queued_answers.append(
        (400, error_body(400, 21610, "Attempt to send to unsubscribed recipient"))
    )
    dispatcher = sms_dispatcher()
    campaign = start(dispatcher, {"ann": "+1 415 555 0100"})

    send_everything(dispatcher)

    ann = item_of(campaign, "ann")
    assert (ann.status, ann.smtp_response) == (
        S.FAILED,
        "Twilio error 21610: Attempt to send to unsubscribed recipient",
    )
    suppression = Suppression.objects.get(pattern="+14155550100")
    assert suppression.source == Suppression.Source.UNSUBSCRIBE


@pytest.mark.parametrize("status", [429, 500, 503])
def test_twilio_busy_or_down_defers_the_message_for_a_later_try(
    twilio: FakeTwilio, status: int
) -> None:
    twilio.queued_answers.append((status, error_body(status, 20429, "Too Many Requests")))
    dispatcher = sms_dispatcher()
    campaign = start(dispatcher, {"ann": "+1 415 555 0100", "bob": "+44 20 7946 0000"})

    send_everything(dispatcher)

    ann = item_of(campaign, "ann")
    assert (ann.status, ann.smtp_code) == (S.DEFERRED, status)
    assert ann.next_attempt_at is not None
    assert item_of(campaign, "bob").status == S.SENT


def test_a_wrong_auth_token_stops_the_dispatcher_and_fails_nobody(twilio: FakeTwilio) -> None:
    dispatcher = sms_dispatcher(twilio_auth_token="0" * 32)
    campaign = start(dispatcher, {"ann": "+1 415 555 0100", "bob": "+44 20 7946 0000"})

    send_everything(dispatcher)

    dispatcher.refresh_from_db()
    assert not dispatcher.is_enabled
    assert dispatcher.paused_reason == "Stopped: Twilio error 20003: Authenticate"
    notification = Notification.objects.get(key=f"dispatcher:{dispatcher.pk}:paused")
    assert "auth token" in notification.message
    assert set(CampaignItem.objects.filter(campaign=campaign).values_list("status", flat=True)) == {
        S.PENDING
    }
    assert twilio.refused_auth == 1 and twilio.messages == []


def test_twilio_unreachable_puts_the_batch_back_untouched(settings, twilio: FakeTwilio) -> None:
    settings.HERALD_TWILIO_API_URL = "http://127.0.0.1:9"  # nothing listens (discard)
    dispatcher = sms_dispatcher()
    campaign = start(dispatcher, {"ann": "+1 415 555 0100"})

    batch = services.batch_claim(dispatcher_id=dispatcher.pk)
    services.batch_send(batch_id=batch.pk)

    ann = item_of(campaign, "ann")
    assert (ann.status, ann.possibly_duplicated, ann.attempts) == (S.PENDING, False, 0)
    dispatcher.refresh_from_db()
    assert "Twilio could not be reached" in dispatcher.last_error


def test_a_message_whose_answer_never_came_is_sent_again_and_flagged(
    monkeypatch, twilio: FakeTwilio
) -> None:
    monkeypatch.setattr(TwilioTransport, "timeout", 0.5)
    twilio.delay_next = 2.0
    dispatcher = sms_dispatcher()
    campaign = start(dispatcher, {"ann": "+1 415 555 0100"})

    batch = services.batch_claim(dispatcher_id=dispatcher.pk)
    services.batch_send(batch_id=batch.pk)

    ann = item_of(campaign, "ann")
    assert (ann.status, ann.possibly_duplicated) == (S.PENDING, True)
    send_everything(dispatcher)
    ann.refresh_from_db()
    assert (ann.status, ann.possibly_duplicated) == (S.SENT, True)
    assert ann.queue_id == twilio.messages[1]["Sid"]
    assert [m["To"] for m in twilio.messages] == ["+14155550100"] * 2


# --- status callbacks ------------------------------------------------------------


@pytest.fixture
def sent(twilio: FakeTwilio) -> CampaignItem:
    """One SMS handed to Twilio, waiting for its callbacks."""
    dispatcher = sms_dispatcher()
    campaign = start(dispatcher, {"ann": "+1 415 555 0100"})
    send_everything(dispatcher)
    return item_of(campaign, "ann")


def callback_url(item: CampaignItem) -> str:
    return f"{PUBLIC_URL}/sms/status/{item.campaign.dispatcher_id}/"


def post_callback(client: Client, url: str, params: dict[str, str], signature: str | None) -> int:
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    return client.post(urlparse(url).path, params, headers=headers).status_code


def deliver(client: Client, item: CampaignItem, status: str, **extra: str) -> int:
    """A callback signed exactly as Twilio signs it."""
    url = callback_url(item)
    params = callback_params(item.queue_id, status, to="+14155550100", **extra)
    return post_callback(client, url, params, twilio_signature(url, params))


def test_the_callbacks_here_are_signed_as_twilios_documentation_signs() -> None:
    # The example of Twilio's webhook security page.
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675309",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert twilio_signature(url, params, "12345") == "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_a_signed_delivered_callback_marks_the_sms_delivered(client: Client, sent) -> None:
    assert deliver(client, sent, "sent") == 200
    assert deliver(client, sent, "delivered") == 200

    sent.refresh_from_db()
    assert (sent.status, sent.provider_status) == (S.SENT, "delivered")


def test_an_undelivered_sms_fails_with_twilios_error_code(client: Client, sent) -> None:
    assert deliver(client, sent, "undelivered", error_code="30003") == 200

    sent.refresh_from_db()
    assert (sent.status, sent.provider_status) == (S.FAILED, "undelivered")
    assert sent.smtp_response == "Twilio error 30003: Unreachable destination handset (undelivered)"


def test_a_status_never_moves_backwards(client: Client, sent) -> None:
    deliver(client, sent, "delivered")
    assert deliver(client, sent, "sent") == 200
    assert deliver(client, sent, "queued") == 200
    assert deliver(client, sent, "failed", error_code="30008") == 200

    sent.refresh_from_db()
    assert (sent.status, sent.provider_status) == (S.SENT, "delivered")


def test_a_failed_sms_stays_failed_whatever_arrives_late(client: Client, sent) -> None:
    deliver(client, sent, "failed", error_code="30007")
    deliver(client, sent, "delivered")
    deliver(client, sent, "sent")

    sent.refresh_from_db()
    assert (sent.status, sent.provider_status) == (S.FAILED, "failed")
    assert sent.smtp_response == "Twilio error 30007: Message filtered by the carrier (failed)"


def test_callbacks_out_of_order_end_where_the_furthest_one_says(client: Client, sent) -> None:
    deliver(client, sent, "sent")
    deliver(client, sent, "sending")

    sent.refresh_from_db()
    assert sent.provider_status == "sent"


def _unchanged(item: CampaignItem) -> None:
    before = (item.status, item.provider_status, item.smtp_response)
    item.refresh_from_db()
    assert (item.status, item.provider_status, item.smtp_response) == before


def test_a_forged_callback_is_refused_and_changes_nothing(client: Client, sent) -> None:
    url = callback_url(sent)
    params = callback_params(sent.queue_id, "failed", error_code="30003")

    assert post_callback(client, url, params, twilio_signature(url, params, "1" * 32)) == 403
    assert post_callback(client, url, params, None) == 403
    assert post_callback(client, url, params, "") == 403
    _unchanged(sent)


def test_an_altered_callback_is_refused_and_changes_nothing(client: Client, sent) -> None:
    url = callback_url(sent)
    genuine = callback_params(sent.queue_id, "delivered")
    signature = twilio_signature(url, genuine)
    altered = {**genuine, "MessageStatus": "undelivered", "ErrorCode": "30003"}

    assert post_callback(client, url, altered, signature) == 403
    # Signed for another URL (another dispatcher's, say): refused too.
    other = sms_dispatcher(name="Other SMS")
    other_url = f"{PUBLIC_URL}/sms/status/{other.pk}/"
    assert post_callback(client, other_url, genuine, signature) == 403
    # Genuinely signed for the other dispatcher, but about this one's message.
    failed = {**genuine, "MessageStatus": "failed"}
    assert post_callback(client, other_url, failed, twilio_signature(other_url, failed)) == 200
    _unchanged(sent)


def test_a_callback_for_an_unknown_message_is_answered_and_changes_nothing(
    client: Client, sent
) -> None:
    url = callback_url(sent)
    params = callback_params("SM" + "9" * 32, "failed", error_code="30003")

    assert post_callback(client, url, params, twilio_signature(url, params)) == 200
    _unchanged(sent)


def test_a_get_or_an_email_dispatcher_has_no_callback(client: Client, sent) -> None:
    email = make_dispatcher(name="Email")
    url = f"{PUBLIC_URL}/sms/status/{email.pk}/"
    params = callback_params(sent.queue_id, "failed")

    assert post_callback(client, url, params, twilio_signature(url, params)) == 403
    assert client.get(urlparse(callback_url(sent)).path).status_code == 405
    _unchanged(sent)
