"""Email service providers' tracking webhooks (Mailgun, Postmark) about
mail Herald really sent: verified requests record bounces, complaints and
unsubscribes and apply the rules; forged, unauthenticated and stale ones
are refused and change nothing; events replayed in any order, any number
of times, leave the same state. Payloads have the providers' real shapes
(Mailgun's webhook "event-data" with its signature block, Postmark's
RecordType events)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
import time
from typing import Any

import pytest
from django.test import Client

from bounces.models import Bounce, Kind
from campaigns.models import CampaignItem, Contact, Suppression
from tests.smtp import Received

from .conftest import item_of

pytestmark = pytest.mark.django_db
S = CampaignItem.Status
SIGNING_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
SECRET = "mailgun:Xq8-webhook-secret"
MAILGUN = "/webhooks/mailgun/tracking/"
POSTMARK = "/webhooks/postmark/tracking/"


@pytest.fixture(autouse=True)
def webhook_settings(settings: Any) -> None:
    settings.HERALD_WEBHOOK_SECRET = [SECRET]
    settings.HERALD_MAILGUN_WEBHOOK_SIGNING_KEY = SIGNING_KEY


def auth(secret: str = SECRET) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(secret.encode()).decode()}


def mailgun(
    event: str,
    message: Received,
    *,
    timestamp: float | None = None,
    key: str = SIGNING_KEY,
    **data: Any,
) -> bytes:
    """A Mailgun webhook body about ``message`` as Mailgun posts it, signed with ``key``."""
    stamp = str(int(timestamp if timestamp is not None else time.time()))
    token = secrets.token_hex(25)
    signature = hmac.new(key.encode(), f"{stamp}{token}".encode(), hashlib.sha256).hexdigest()
    recipient = message.recipients[0]
    event_data = {
        "event": event,
        "id": secrets.token_urlsafe(16),
        "timestamp": float(stamp) + 0.375624,
        "log-level": "info" if event in ("delivered", "opened") else "error",
        "envelope": {"sender": message.sender, "transport": "smtp", "targets": recipient},
        "flags": {"is-routed": False, "is-authenticated": True, "is-system-test": False},
        "message": {
            "headers": {
                "to": recipient,
                "message-id": message.message["Message-ID"].strip("<>"),
                "from": message.message["From"],
                "subject": message.message["Subject"],
            },
            "attachments": [],
            "size": len(message.raw),
        },
        "recipient": recipient,
        "recipient-domain": recipient.partition("@")[2],
        "campaigns": [],
        "tags": [],
        "user-variables": {},
    }
    event_data |= data
    body = {
        "signature": {"timestamp": stamp, "token": token, "signature": signature},
        "event-data": event_data,
    }
    return json.dumps(body).encode()


def failed(message: Received, *, severity: str = "permanent", **kwargs: Any) -> bytes:
    return mailgun(
        "failed",
        message,
        severity=severity,
        reason="bounce" if severity == "permanent" else "generic",
        **{
            "delivery-status": {
                "attempt-no": 1,
                "code": 550 if severity == "permanent" else 452,
                "message": "5.1.1 The email account that you tried to reach does not exist."
                if severity == "permanent"
                else "4.2.2 The email account that you tried to reach is over quota.",
                "description": "",
                "mx-host": "mx.example.org",
            }
        },
        **kwargs,
    )


def post(url: str, body: bytes, **headers: str) -> int:
    headers = headers or auth()
    return Client().post(url, body, content_type="application/json", **headers).status_code


def state() -> dict[str, Any]:
    return {
        "contacts": sorted(Contact.objects.values_list("email", "status")),
        "items": sorted(CampaignItem.objects.values_list("contact__email", "status")),
        "suppressions": sorted(Suppression.objects.values_list("pattern", "source")),
        "bounces": sorted(
            Bounce.objects.values_list("provider", "message_uid", "recipient", "kind", "outcome")
        ),
    }


# --- Mailgun ---------------------------------------------------------------------


def test_a_permanent_failure_bounces_the_item_and_suppresses_the_address(
    sent: dict[str, Received],
) -> None:
    assert post(MAILGUN, failed(sent["user0@example.org"])) == 200

    item = item_of("user0@example.org")
    assert item.status == S.BOUNCED
    assert item.contact.status == Contact.Status.BOUNCED
    assert Suppression.objects.get().pattern == "user0@example.org"
    bounce = Bounce.objects.get()
    assert (bounce.provider, bounce.kind, bounce.matched_by, bounce.status_code) == (
        "mailgun",
        Kind.HARD,
        "message-id",
        "5.1.1",
    )
    assert (bounce.item, bounce.campaign_id, bounce.contact) == (
        item,
        item.campaign_id,
        item.contact,
    )
    assert "does not exist" in bounce.diagnostic


def test_complaints_unsubscribes_and_deliveries(
    sent: dict[str, Received],
) -> None:
    assert post(MAILGUN, mailgun("complained", sent["user1@example.org"])) == 200
    assert post(MAILGUN, mailgun("unsubscribed", sent["user2@example.org"])) == 200
    assert post(MAILGUN, mailgun("delivered", sent["user0@example.org"])) == 200
    assert post(MAILGUN, failed(sent["user0@example.org"], severity="temporary")) == 200

    assert item_of("user1@example.org").contact.status == Contact.Status.COMPLAINED
    assert Suppression.objects.get().source == Suppression.Source.COMPLAINT
    assert item_of("user2@example.org").contact.status == Contact.Status.UNSUBSCRIBED
    # A delivery and a temporary failure (Mailgun retries) change nothing.
    assert item_of("user0@example.org").status == S.SENT
    assert item_of("user0@example.org").contact.status == Contact.Status.ACTIVE
    assert sorted(Bounce.objects.values_list("kind", flat=True)) == [
        Kind.COMPLAINT,
        Kind.UNSUBSCRIBE,
    ]


@pytest.mark.parametrize(
    "forgery",
    [
        "no basic auth",
        "wrong basic auth",
        "wrong signing key",
        "altered signature",
        "stale",
        "from the future",
        "no secret configured",
        "no signing key configured",
    ],
)
def test_forged_unauthenticated_and_stale_requests_are_refused(
    sent: dict[str, Received],
    settings: Any,
    forgery: str,
) -> None:
    received = sent["user0@example.org"]
    headers = auth()
    body = failed(received)
    if forgery == "no basic auth":
        headers = {}
    elif forgery == "wrong basic auth":
        headers = auth("mailgun:guessed")
    elif forgery == "wrong signing key":
        body = failed(received, key="key-someone-elses")
    elif forgery == "altered signature":
        payload = json.loads(body)
        payload["signature"]["token"] = secrets.token_hex(25)
        body = json.dumps(payload).encode()
    elif forgery == "stale":
        body = failed(received, timestamp=time.time() - settings.HERALD_WEBHOOK_MAX_AGE - 60)
    elif forgery == "from the future":
        body = failed(received, timestamp=time.time() + 3600)
    elif forgery == "no secret configured":
        settings.HERALD_WEBHOOK_SECRET = []
        headers = auth()
    elif forgery == "no signing key configured":
        settings.HERALD_MAILGUN_WEBHOOK_SIGNING_KEY = ""
    before = state()

    status = Client().post(MAILGUN, body, content_type="application/json", **headers).status_code

    assert status in (400, 401, 403)
    assert state() == before
    assert item_of("user0@example.org").status == S.SENT


def test_a_replayed_request_is_recorded_once(
    sent: dict[str, Received],
) -> None:
    body = failed(sent["user0@example.org"])
    for _ in range(3):
        assert post(MAILGUN, body) == 200
    assert Bounce.objects.count() == 1


def test_events_replayed_three_times_in_shuffled_order_leave_the_same_state(
    sent: dict[str, Received],
) -> None:
    user0, user1, user2 = (sent[f"user{i}@example.org"] for i in range(3))
    events = [
        (MAILGUN, mailgun("delivered", user0)),
        (MAILGUN, failed(user0)),
        (MAILGUN, mailgun("complained", user1)),
        (MAILGUN, mailgun("unsubscribed", user1)),
        (MAILGUN, failed(user1)),
        (MAILGUN, failed(user2, severity="temporary")),
        (MAILGUN, mailgun("unsubscribed", user2)),
        (MAILGUN, failed(user2)),
    ]
    for url, body in events:
        assert post(url, body) == 200
    expected = state()
    assert dict(expected["contacts"]) == {
        "user0@example.org": Contact.Status.BOUNCED,
        "user1@example.org": Contact.Status.COMPLAINED,
        "user2@example.org": Contact.Status.UNSUBSCRIBED,
    }

    for seed in (1, 2, 3):
        Bounce.objects.all().delete()
        Suppression.objects.all().delete()
        Contact.objects.update(status=Contact.Status.ACTIVE)
        CampaignItem.objects.update(status=S.SENT)
        replay = events * 3
        random.Random(seed).shuffle(replay)
        for url, body in replay:
            assert post(url, body) == 200
        assert state() == expected, f"seed {seed}"


# --- Postmark ----------------------------------------------------------------------


def postmark_ids(sent: dict[str, Received]) -> dict[str, str]:
    """What an ESP transport records at send: Postmark's MessageID per item."""
    ids = {}
    for email in sent:
        ids[email] = f"883953f4-6105-42a2-a16a-{secrets.token_hex(6)}"
        CampaignItem.objects.filter(contact__email=email).update(queue_id=ids[email])
    return ids


def test_postmark_bounce_complaint_and_subscription_change(
    sent: dict[str, Received],
) -> None:
    ids = postmark_ids(sent)
    bounce = {
        "RecordType": "Bounce",
        "MessageStream": "outbound",
        "ID": 4323372036854775807,
        "Type": "HardBounce",
        "TypeCode": 1,
        "Name": "Hard bounce",
        "Tag": "",
        "MessageID": ids["user0@example.org"],
        "Metadata": {},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, "
        "mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": "user0@example.org",
        "From": "news@herald.test",
        "BouncedAt": "2026-11-05T16:33:54.9070259Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Hello",
    }
    complaint = bounce | {
        "RecordType": "SpamComplaint",
        "ID": 4323372036854775808,
        "Type": "SpamComplaint",
        "TypeCode": 512,
        "Name": "Spam complaint",
        "MessageID": ids["user1@example.org"],
        "Email": "user1@example.org",
    }
    unsubscribe = {
        "RecordType": "SubscriptionChange",
        "MessageID": ids["user2@example.org"],
        "ServerID": 23,
        "MessageStream": "outbound",
        "ChangedAt": "2026-11-05T16:40:00Z",
        "Recipient": "user2@example.org",
        "Origin": "Recipient",
        "SuppressSending": True,
        "SuppressionReason": "ManualSuppression",
        "Tag": "",
        "Metadata": {},
    }
    delivery = {
        "RecordType": "Delivery",
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": ids["user2@example.org"],
        "Recipient": "user2@example.org",
        "Tag": "",
        "DeliveredAt": "2026-11-05T16:33:54.9070259Z",
        "Details": "Test delivery webhook details",
        "Metadata": {},
    }
    for event in (bounce, complaint, unsubscribe, delivery, unsubscribe, bounce):
        assert post(POSTMARK, json.dumps(event).encode()) == 200

    assert item_of("user0@example.org").status == S.BOUNCED
    assert item_of("user0@example.org").contact.status == Contact.Status.BOUNCED
    assert item_of("user1@example.org").contact.status == Contact.Status.COMPLAINED
    assert item_of("user2@example.org").contact.status == Contact.Status.UNSUBSCRIBED
    assert set(Bounce.objects.values_list("matched_by", flat=True)) == {"esp-id"}
    assert Bounce.objects.count() == 3  # the repeated ones recorded once


def test_postmark_without_the_shared_secret_is_refused(
    sent: dict[str, Received],
) -> None:
    event = {"RecordType": "SpamComplaint", "Type": "SpamComplaint", "ID": 1}
    event |= {"Email": "user0@example.org", "MessageID": "x"}
    body = json.dumps(event).encode()
    assert Client().post(POSTMARK, body, content_type="application/json").status_code == 400
    assert post(POSTMARK, body, **auth("postmark:wrong")) == 400
    assert not Bounce.objects.exists()
    assert item_of("user0@example.org").contact.status == Contact.Status.ACTIVE


def test_opens_clicks_and_deliveries_the_provider_saw_reach_the_report(
    sent: dict[str, Received],
) -> None:
    from campaigns.models import Campaign, TrackedLink

    browser = {"client-info": {"user-agent": "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15"}}
    opened = mailgun("opened", sent["user0@example.org"], **browser)
    clicked = mailgun(
        "clicked", sent["user0@example.org"], url="https://shop.example.com/sale", **browser
    )
    for body in (opened, opened, clicked, clicked):  # each retried once
        assert post(MAILGUN, body) == 200
    scanner = {"client-info": {"user-agent": "Mimecast URL Protect"}}
    assert post(MAILGUN, mailgun("opened", sent["user1@example.org"], **scanner)) == 200
    assert post(MAILGUN, mailgun("delivered", sent["user2@example.org"])) == 200

    campaign = Campaign.objects.get()
    assert (campaign.unique_opens, campaign.unique_clicks) == (1, 1)  # the scanner not counted
    assert TrackedLink.objects.get().url == "https://shop.example.com/sale"
    assert item_of("user2@example.org").provider_status == "delivered"
    assert not Bounce.objects.exists()  # engagement is never a bounce
