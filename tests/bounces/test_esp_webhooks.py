"""Every email service's tracking webhook, one URL per API dispatcher, about
mail Herald really sent: requests with the shared secret and the
provider's own valid, fresh signature are applied (bounces, complaints,
unsubscribes, deliveries); missing or wrong secrets, bad signatures, stale
timestamps and missing signing keys are refused and change nothing; events
replayed in any order leave the same state. Payloads have the providers'
documented shapes, as anymail's own test suite posts them; signatures are
made the way each provider makes them (Amazon SNS's with a test
certificate served from a local HTTP server)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from django.test import Client
from django.urls import reverse

from bounces import sns
from bounces.models import Bounce, Kind
from campaigns.models import Campaign, CampaignItem, Contact, Suppression
from dispatchers.models import Dispatcher
from tests.helpers import make_dispatcher
from tests.smtp import Received

from .conftest import item_of
from .test_webhooks import state

pytestmark = pytest.mark.django_db
S = CampaignItem.Status
SECRET = "herald:Xq8-webhook-secret"
PUBLIC_URL = "https://herald.example.org"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:herald-events"

# An event: kind, recipient, the provider's message id, when it happened.
Event = tuple[str, str, str, float]


@dataclass
class Signed:
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _pem_body(public_key: Any) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ms(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")


DIAG = "550 5.1.1 The email account that you tried to reach does not exist."


# --- the providers' payloads ---------------------------------------------------------


def sendgrid_event(kind: str, email: str, qid: str, when: float) -> Any:
    name = {"bounce": "bounce", "complaint": "spamreport", "unsubscribe": "unsubscribe"}
    event = {
        "email": email,
        "timestamp": int(when),
        "smtp-id": f"<{qid}@herald.test>",
        "event": name.get(kind, "delivered"),
        "category": ["newsletter"],
        "sg_event_id": base64.urlsafe_b64encode(secrets.token_bytes(16)).decode(),
        "sg_message_id": f"{qid}.filter0001.16648.5515E0B88.0",
        "anymail_id": qid,
    }
    if kind == "bounce":
        event |= {"reason": DIAG, "status": "5.1.1", "type": "bounce"}
    if kind == "delivered":
        event |= {"response": "250 OK", "ip": "168.1.1.1", "tls": 1}
    return [event]


def mailgun_event(kind: str, email: str, qid: str, when: float) -> Any:
    name = {"bounce": "failed", "complaint": "complained", "unsubscribe": "unsubscribed"}
    data = {
        "event": name.get(kind, "delivered"),
        "id": secrets.token_urlsafe(16),
        "timestamp": when,
        "log-level": "error" if kind == "bounce" else "info",
        "message": {"headers": {"message-id": qid, "to": email}},
        "recipient": email,
        "recipient-domain": email.partition("@")[2],
    }
    if kind == "bounce":
        data |= {"severity": "permanent", "reason": "bounce"}
        data["delivery-status"] = {"code": 550, "message": DIAG, "description": ""}
    return data


def postmark_event(kind: str, email: str, qid: str, when: float) -> Any:
    if kind == "unsubscribe":
        return {
            "RecordType": "SubscriptionChange",
            "MessageID": qid,
            "ServerID": 23,
            "MessageStream": "broadcast",
            "ChangedAt": _iso(when),
            "Recipient": email,
            "Origin": "Recipient",
            "SuppressSending": True,
            "SuppressionReason": "ManualSuppression",
        }
    if kind == "delivered":
        return {
            "RecordType": "Delivery",
            "MessageID": qid,
            "Recipient": email,
            "DeliveredAt": _iso(when),
            "Details": "Test delivery webhook details",
        }
    bounce = kind == "bounce"
    return {
        "RecordType": "Bounce" if bounce else "SpamComplaint",
        "ID": random.randrange(10**12, 10**13),
        "Type": "HardBounce" if bounce else "SpamComplaint",
        "TypeCode": 1 if bounce else 512,
        "MessageID": qid,
        "Description": "The server was unable to deliver your message",
        "Details": f"smtp;{DIAG}",
        "Email": email,
        "BouncedAt": _iso(when),
    }


def sparkpost_event(kind: str, email: str, qid: str, when: float) -> Any:
    event = {
        "event_id": str(random.randrange(10**17, 10**18)),
        "transmission_id": qid,
        "message_id": secrets.token_hex(10),
        "raw_rcpt_to": email,
        "rcpt_to": email,
        "timestamp": str(int(when)),
        "campaign_id": "newsletter",
        "rcpt_meta": {},
    }
    if kind == "unsubscribe":
        return [{"msys": {"unsubscribe_event": event | {"type": "list_unsubscribe"}}}]
    if kind == "bounce":
        event |= {"type": "bounce", "bounce_class": "10", "raw_reason": DIAG, "reason": DIAG}
    elif kind == "complaint":
        event |= {"type": "spam_complaint", "fbtype": "abuse", "report_by": "server.com"}
    else:
        event |= {"type": "delivery", "raw_reason": "250 2.0.0 OK"}
    return [{"msys": {"message_event": event}}]


def brevo_event(kind: str, email: str, qid: str, when: float) -> Any:
    name = {"bounce": "hard_bounce", "complaint": "spam", "unsubscribe": "unsubscribe"}
    return {
        "event": name.get(kind, "delivered"),
        "email": email,
        "id": 1234567,
        "date": datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "ts": int(when),
        "message-id": qid,
        "ts_event": int(when),
        "subject": "Hello",
        "tag": "newsletter",
        "sending_ip": "185.41.28.109",
        "ts_epoch": int(when * 1000),
        "reason": DIAG if kind == "bounce" else "sent",
    }


def mailjet_event(kind: str, email: str, qid: str, when: float) -> Any:
    name = {"bounce": "bounce", "complaint": "spam", "unsubscribe": "unsub"}
    event = {
        "event": name.get(kind, "sent"),
        "time": int(when),
        "MessageID": int(qid),
        "Message_GUID": str(uuid.uuid4()),
        "email": email,
        "mj_campaign_id": 0,
        "mj_contact_id": random.randrange(10**8),
        "customcampaign": "",
        "CustomID": "",
        "Payload": "",
    }
    if kind == "bounce":
        event |= {"blocked": False, "hard_bounce": True, "error_related_to": "recipient"}
        event |= {"error": "user unknown", "comment": DIAG}
    elif kind == "complaint":
        event |= {"source": "JMRPP"}
    elif kind == "unsubscribe":
        event |= {"listid": 0, "ip": "127.0.0.1", "geo": "FR", "agent": "Mozilla/5.0"}
    else:
        event |= {"smtp_reply": "250 2.0.0 OK"}
    return event


def mailersend_event(kind: str, email: str, qid: str, when: float) -> Any:
    name = {"bounce": "hard_bounced", "complaint": "spam_complaint", "unsubscribe": "unsubscribed"}
    morph = {
        "bounce": {"object": "recipient_bounce", "reason": DIAG},
        "complaint": {"object": "spam_complaint", "reason": None},
        "unsubscribe": {
            "object": "recipient_unsubscribe",
            "reason": "NO_LONGER_WANT",
            "readable_reason": "I no longer want to receive these emails",
        },
    }
    activity = name.get(kind, "delivered")
    return {
        "type": f"activity.{activity}",
        "domain_id": "7z3m5jgrogdpyo6n",
        "created_at": _ms(when),
        "webhook_id": "7z3m5jgrogdpyo6n",
        "url": "https://herald.example.org/webhooks/",
        "data": {
            "object": "activity",
            "id": secrets.token_hex(12),
            "type": activity,
            "created_at": _ms(when),
            "email": {
                "object": "email",
                "id": secrets.token_hex(12),
                "from": "news@herald.test",
                "subject": "Hello",
                "status": "rejected" if kind == "bounce" else "delivered",
                "tags": None,
                "message": {"object": "message", "id": qid, "created_at": _ms(when - 5)},
                "recipient": {"object": "recipient", "email": email},
            },
            "morph": morph.get(kind),
        },
    }


def mandrill_event(kind: str, email: str, qid: str, when: float) -> Any:
    name = {"bounce": "hard_bounce", "complaint": "spam", "unsubscribe": "unsub"}
    msg = {
        "ts": int(when) - 5,
        "_id": qid,
        "state": "bounced" if kind == "bounce" else "sent",
        "subject": "Hello",
        "email": email,
        "tags": [],
        "sender": "news@herald.test",
        "metadata": {},
    }
    if kind == "bounce":
        msg |= {"bounce_description": "bad_mailbox", "diag": f"smtp;{DIAG}"}
    return [{"event": name.get(kind, "send"), "_id": qid, "ts": int(when), "msg": msg}]


def mailtrap_event(kind: str, email: str, qid: str, when: float) -> Any:
    name = {"bounce": "bounce", "complaint": "spam", "unsubscribe": "unsubscribe"}
    event = {
        "event": name.get(kind, "delivery"),
        "message_id": qid,
        "sending_stream": "bulk",
        "email": email,
        "timestamp": int(when),
        "event_id": str(uuid.uuid4()),
        "category": "newsletter",
    }
    if kind == "bounce":
        event |= {"response": DIAG, "response_code": 550, "bounce_category": "invalid_recipient"}
    return {"events": [event]}


def postal_event(kind: str, email: str, qid: str, when: float) -> Any:
    message = {
        "id": int(qid),
        "token": secrets.token_urlsafe(8),
        "direction": "outgoing",
        "message_id": f"{qid}@herald.test",
        "to": email,
        "from": "news@herald.test",
        "subject": "Hello",
        "timestamp": when - 5,
        "spam_status": "NotChecked",
        "tag": None,
    }
    status = {"bounce": "HardFail", "delivered": "Sent"}[kind]
    return {
        "event": "MessageDeliveryFailed" if kind == "bounce" else "MessageSent",
        "timestamp": when,
        "uuid": str(uuid.uuid4()),
        "payload": {
            "message": message,
            "status": status,
            "details": f"Message sent by SMTP to mx.example.org ({status})",
            "output": DIAG if kind == "bounce" else "250 2.0.0 OK",
            "sent_with_ssl": True,
            "timestamp": when,
            "time": 0.23,
        },
    }


def resend_event(kind: str, email: str, qid: str, when: float) -> Any:
    name = {"bounce": "email.bounced", "complaint": "email.complained"}
    data = {
        "created_at": _ms(when - 5),
        "email_id": qid,
        "from": "Herald News <news@herald.test>",
        "to": [email],
        "subject": "Hello",
    }
    if kind == "bounce":
        data["bounce"] = {
            "message": "The recipient's email provider sent a hard bounce message, and "
            "there's nothing you can do about it.",
            "subType": "General",
            "type": "Permanent",
        }
    return {"type": name.get(kind, "email.delivered"), "created_at": _ms(when), "data": data}


def unisender_go_event(kind: str, email: str, qid: str, when: float) -> Any:
    name = {"bounce": "hard_bounced", "complaint": "spam", "unsubscribe": "unsubscribed"}
    status = name.get(kind, "delivered")
    return {
        "auth": "",
        "events_by_user": [
            {
                "user_id": 456,
                "project_id": "6432890213745872",
                "project_name": "Herald",
                "events": [
                    {
                        "event_name": "transactional_email_status",
                        "event_data": {
                            "job_id": "1a3Q2V-0000OZ-S0",
                            "metadata": {"anymail_id": qid},
                            "email": email,
                            "status": status,
                            "event_time": datetime.fromtimestamp(when, UTC).strftime(
                                "%Y-%m-%d %H:%M:%S"
                            ),
                            "url": None,
                            "delivery_info": {
                                "delivery_status": "err_user_unknown" if kind == "bounce" else "",
                                "destination_response": DIAG if kind == "bounce" else "",
                                "user_agent": None,
                                "ip": None,
                            },
                        },
                    }
                ],
            }
        ],
    }


def ses_event(kind: str, email: str, qid: str, when: float) -> Any:
    mail = {
        "timestamp": _ms(when - 5),
        "source": "news@herald.test",
        "messageId": qid,
        "destination": [email],
        "headers": [],
    }
    if kind == "bounce":
        recipient = {"emailAddress": email, "action": "failed", "status": "5.1.1"}
        recipient["diagnosticCode"] = f"smtp; {DIAG}"
        detail = {"bounceType": "Permanent", "bounceSubType": "General"}
        detail |= {"bouncedRecipients": [recipient], "timestamp": _ms(when)}
        return {"eventType": "Bounce", "bounce": detail, "mail": mail}
    if kind == "complaint":
        detail = {"complainedRecipients": [{"emailAddress": email}], "timestamp": _ms(when)}
        detail |= {"complaintFeedbackType": "abuse", "feedbackId": secrets.token_hex(8)}
        return {"eventType": "Complaint", "complaint": detail, "mail": mail}
    detail = {"recipients": [email], "smtpResponse": "250 2.6.0 Message received"}
    return {"eventType": "Delivery", "delivery": detail | {"timestamp": _ms(when)}, "mail": mail}


# --- how each provider signs --------------------------------------------------------


@dataclass
class Keys:
    """The dispatcher's signing key and the provider's signing material."""

    stored: str = ""  # what the administrator enters on the dispatcher page
    private: Any = None  # the provider's side (asymmetric keys)


def _hmac_hex(key: str, body: bytes, digest: Any = hashlib.sha256) -> str:
    return hmac.new(key.encode(), body, digest).hexdigest()


def sign_plain(payload: Any, keys: Keys, when: float) -> Signed:
    return Signed(json.dumps(payload).encode())


def sign_mailgun(payload: Any, keys: Keys, when: float) -> Signed:
    stamp, token = str(int(when)), secrets.token_hex(25)
    signature = _hmac_hex(keys.stored, f"{stamp}{token}".encode())
    body = {"signature": {"timestamp": stamp, "token": token, "signature": signature}}
    return Signed(json.dumps(body | {"event-data": payload}).encode())


def sign_sendgrid(payload: Any, keys: Keys, when: float) -> Signed:
    body, stamp = json.dumps(payload).encode(), str(int(when))
    signature = keys.private.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return Signed(
        body,
        headers={
            "HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_SIGNATURE": base64.b64encode(signature).decode(),
            "HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_TIMESTAMP": stamp,
        },
    )


def sign_body_hmac(header: str) -> Callable[[Any, Keys, float], Signed]:
    def sign(payload: Any, keys: Keys, when: float) -> Signed:
        body = json.dumps(payload).encode()
        return Signed(body, headers={header: _hmac_hex(keys.stored, body)})

    return sign


def sign_mandrill(payload: Any, keys: Keys, when: float) -> Signed:
    params = {"mandrill_events": json.dumps(payload)}
    path = reverse("bounces:esp_tracking", args=["mandrill", keys.private])
    scheme, _, host = PUBLIC_URL.partition("://")
    signed = f"{scheme}://{SECRET}@{host}{path}" + "mandrill_events" + params["mandrill_events"]
    digest = hmac.new(keys.stored.encode(), signed.encode(), hashlib.sha1).digest()
    return Signed(
        urlencode(params).encode(),
        "application/x-www-form-urlencoded",
        {"HTTP_X_MANDRILL_SIGNATURE": base64.b64encode(digest).decode()},
    )


def sign_postal(payload: Any, keys: Keys, when: float) -> Signed:
    body = json.dumps(payload).encode()
    signature = keys.private.sign(body, padding.PKCS1v15(), hashes.SHA1())
    return Signed(body, headers={"HTTP_X_POSTAL_SIGNATURE": base64.b64encode(signature).decode()})


def sign_resend(payload: Any, keys: Keys, when: float) -> Signed:
    body, msg_id, stamp = json.dumps(payload).encode(), f"msg_{uuid.uuid4().hex}", str(int(when))
    secret = base64.b64decode(keys.stored.removeprefix("whsec_"))
    digest = hmac.new(secret, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return Signed(
        body,
        headers={
            "HTTP_SVIX_ID": msg_id,
            "HTTP_SVIX_TIMESTAMP": stamp,
            "HTTP_SVIX_SIGNATURE": "v1,bm90IHRoaXMgb25l v1," + base64.b64encode(digest).decode(),
        },
    )


def sign_unisender_go(payload: Any, keys: Keys, when: float) -> Signed:
    # The auth field is the MD5 of the body with the API key in its place.
    body = json.dumps(payload | {"auth": keys.stored}).encode()
    auth = hashlib.md5(body).hexdigest()
    return Signed(body.replace(keys.stored.encode(), auth.encode()))


def sign_sns(payload: Any, keys: Keys, when: float) -> Signed:
    message = sns_message("Notification", json.dumps(payload), when, keys.private)
    return Signed(
        json.dumps(message).encode(),
        "text/plain; charset=UTF-8",
        {
            "HTTP_X_AMZ_SNS_MESSAGE_TYPE": "Notification",
            "HTTP_X_AMZ_SNS_MESSAGE_ID": message["MessageId"],
        },
    )


# --- Amazon SNS's side: a certificate served over HTTP ---------------------------


class SnsServer:
    """Serves the signing certificate and records subscription confirmations."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self.confirmed: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.endswith(".pem"):
                    body = outer.pem
                else:
                    outer.confirmed.append(self.path)
                    body = b"<ConfirmSubscriptionResponse/>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


SNS_CERT_PATH = "/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"


def sns_message(kind: str, message: str, when: float, signer: tuple[str, Any]) -> dict[str, str]:
    base_url, key = signer
    fields = {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "TopicArn": TOPIC,
        "Message": message,
        "Timestamp": _iso(when),
        "SignatureVersion": "1",
        "SigningCertURL": base_url + SNS_CERT_PATH,
    }
    if kind == "SubscriptionConfirmation":
        fields["Token"] = secrets.token_hex(32)
        fields["SubscribeURL"] = f"{base_url}/?Action=ConfirmSubscription&Token={fields['Token']}"
    order = sns._SIGNED_FIELDS[kind]
    signed = "".join(f"{name}\n{fields[name]}\n" for name in order if name in fields)
    signature = key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA1())
    return fields | {"Signature": base64.b64encode(signature).decode()}


@pytest.fixture
def sns_server(settings: Any) -> Iterator[SnsServer]:
    server = SnsServer()
    settings.HERALD_SNS_URL_PATTERN = r"^http://127\.0\.0\.1:\d+/"
    sns._public_key.cache_clear()
    yield server
    sns._public_key.cache_clear()
    server.stop()


# --- the providers under test ---------------------------------------------------------


@dataclass
class Spec:
    code: str
    event: Callable[[str, str, str, float], Any]
    sign: Callable[[Any, Keys, float], Signed]
    kinds: tuple[str, ...] = ("bounce", "complaint", "unsubscribe", "delivered")
    signs: bool = True  # a bad signature is refused
    fresh: bool = True  # a stale timestamp is refused
    # The provider's message id as its API answered at send.
    message_id: Callable[[int], str] = lambda n: f"esp-{secrets.token_hex(6)}"


def NUMERIC(n: int) -> str:  # noqa: N802 - Mailjet and Postal number their messages
    return str(8_000_000 + n)


SPECS = [
    Spec("sendgrid", sendgrid_event, sign_sendgrid),
    Spec("mailgun", mailgun_event, sign_mailgun),
    Spec("amazon_ses", ses_event, sign_sns, kinds=("bounce", "complaint", "delivered")),
    Spec("postmark", postmark_event, sign_plain, signs=False, fresh=False),
    Spec("sparkpost", sparkpost_event, sign_plain, signs=False, fresh=False),
    Spec(
        "brevo",
        brevo_event,
        sign_plain,
        signs=False,
        fresh=False,
        message_id=lambda n: f"<202611{secrets.token_hex(6)}@smtp-relay.mailin.fr>",
    ),
    Spec("mailjet", mailjet_event, sign_plain, signs=False, fresh=False, message_id=NUMERIC),
    Spec("mailersend", mailersend_event, sign_body_hmac("HTTP_SIGNATURE")),
    Spec("mandrill", mandrill_event, sign_mandrill),
    Spec("mailtrap", mailtrap_event, sign_body_hmac("HTTP_MAILTRAP_SIGNATURE")),
    Spec("postal", postal_event, sign_postal, kinds=("bounce", "delivered"), message_id=NUMERIC),
    Spec("resend", resend_event, sign_resend, kinds=("bounce", "complaint", "delivered")),
    Spec("unisender_go", unisender_go_event, sign_unisender_go),
]


def _keys(code: str, sns_server: SnsServer | None) -> tuple[Keys, dict[str, Any]]:
    """Fresh signing material, and the dispatcher fields that hold its key."""
    if code == "sendgrid":
        private = ec.generate_private_key(ec.SECP256R1())
        keys = Keys(_pem_body(private.public_key()), private)
    elif code == "postal":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        keys = Keys(_pem_body(private.public_key()), private)
    elif code == "resend":
        keys = Keys("whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())
    elif code == "amazon_ses":
        assert sns_server is not None
        keys = Keys("", (sns_server.url, sns_server.key))
        return keys, {"esp_sns_topic_arn": TOPIC}
    elif code in ("postmark", "sparkpost", "brevo", "mailjet"):
        return Keys(), {}
    else:
        keys = Keys(secrets.token_urlsafe(24))
    if code == "unisender_go":
        return keys, {"esp_api_key": keys.stored}
    return keys, {"esp_webhook_key": keys.stored}


@dataclass
class Hook:
    """One provider's webhook on one API dispatcher, about the three sent messages."""

    spec: Spec
    dispatcher: Dispatcher
    keys: Keys
    ids: dict[str, str]
    url: str

    def request(self, kind: str, email: str, *, when: float | None = None) -> Signed:
        when = time.time() if when is None else when
        payload = self.spec.event(kind, email, self.ids[email], when)
        return self.spec.sign(payload, self.keys, when)

    def post(self, signed: Signed, *, auth: str | None = SECRET) -> int:
        headers = dict(signed.headers)
        if auth is not None:
            headers["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(auth.encode()).decode()
        response = Client().post(self.url, signed.body, content_type=signed.content_type, **headers)
        return response.status_code


@pytest.fixture(autouse=True)
def webhook_settings(settings: Any) -> None:
    settings.HERALD_WEBHOOK_SECRET = [SECRET]
    settings.HERALD_PUBLIC_URL = PUBLIC_URL
    settings.HERALD_MAILGUN_WEBHOOK_SIGNING_KEY = ""


@pytest.fixture(params=SPECS, ids=lambda spec: spec.code)
def hook(request: Any, sent: dict[str, Received], settings: Any) -> Iterator[Hook]:
    spec: Spec = request.param
    server = SnsServer() if spec.code == "amazon_ses" else None
    if server:
        settings.HERALD_SNS_URL_PATTERN = r"^http://127\.0\.0\.1:\d+/"
        sns._public_key.cache_clear()
    keys, fields = _keys(spec.code, server)
    dispatcher = make_dispatcher(
        delivery_mode=Dispatcher.DeliveryMode.API,
        esp_provider=spec.code,
        esp_api_key=fields.pop("esp_api_key", "api-key-0123456789"),
        **fields,
    )
    if spec.code == "mandrill":
        keys.private = dispatcher.pk  # the signed URL names the dispatcher
    Campaign.objects.update(dispatcher=dispatcher)  # the provider sent them
    # What the ESP transport recorded at send: the provider's id per message.
    ids = {}
    for n, email in enumerate(sorted(sent)):
        ids[email] = spec.message_id(n)
        CampaignItem.objects.filter(contact__email=email).update(queue_id=ids[email])
    url = reverse("bounces:esp_tracking", args=[spec.code, dispatcher.pk])
    yield Hook(spec, dispatcher, keys, ids, url)
    if server:
        server.stop()
        sns._public_key.cache_clear()


# --- accepted ------------------------------------------------------------------------


def test_signed_events_bounce_complain_unsubscribe_and_deliver(hook: Hook) -> None:
    kinds = hook.spec.kinds
    plan = {"user0@example.org": "bounce", "user2@example.org": "delivered"}
    if "complaint" in kinds:
        plan["user1@example.org"] = "complaint"
    elif "unsubscribe" in kinds:
        plan["user1@example.org"] = "unsubscribe"
    if "unsubscribe" in kinds and "complaint" in kinds:
        plan["user2@example.org"] = "unsubscribe"
    for email, kind in plan.items():
        signed = hook.request(kind, email)
        assert hook.post(signed) == 200, (email, kind)
        assert hook.post(signed) == 200  # the provider's retry

    bounced = item_of("user0@example.org")
    assert (bounced.status, bounced.contact.status) == (S.BOUNCED, Contact.Status.BOUNCED)
    bounce = Bounce.objects.get(recipient="user0@example.org")
    assert (bounce.provider, bounce.kind, bounce.matched_by) == (
        hook.spec.code,
        Kind.HARD,
        "esp-id",
    )
    assert bounce.item == bounced
    assert Suppression.objects.filter(pattern="user0@example.org").exists()
    if "complaint" in kinds:
        assert item_of("user1@example.org").contact.status == Contact.Status.COMPLAINED
    if "unsubscribe" in kinds:
        unsubscribed = "user2@example.org" if "complaint" in kinds else "user1@example.org"
        assert item_of(unsubscribed).contact.status == Contact.Status.UNSUBSCRIBED
    else:
        assert item_of("user2@example.org").provider_status == "delivered"
    # The retries recorded nothing twice.
    assert Bounce.objects.count() == len([k for k in plan.values() if k != "delivered"])


def test_a_soft_bounce_is_not_a_hard_one(sent: dict[str, Received]) -> None:
    """Providers that say 'transient' in their own words: a soft bounce,
    which suppresses nobody on its own (the rules need three)."""
    spec = next(s for s in SPECS if s.code == "mailersend")
    keys, fields = _keys("mailersend", None)
    dispatcher = make_dispatcher(
        delivery_mode=Dispatcher.DeliveryMode.API, esp_provider="mailersend", **fields
    )
    Campaign.objects.update(dispatcher=dispatcher)
    CampaignItem.objects.filter(contact__email="user0@example.org").update(queue_id="ms-1")
    payload = mailersend_event("bounce", "user0@example.org", "ms-1", time.time())
    payload["type"], payload["data"]["type"] = "activity.soft_bounced", "soft_bounced"
    hook = Hook(
        spec,
        dispatcher,
        keys,
        {},
        reverse("bounces:esp_tracking", args=["mailersend", dispatcher.pk]),
    )
    assert hook.post(spec.sign(payload, keys, time.time())) == 200

    assert Bounce.objects.get().kind == Kind.SOFT
    assert item_of("user0@example.org").contact.status == Contact.Status.ACTIVE
    assert not Suppression.objects.exists()


def test_an_event_about_mail_another_dispatcher_sent_moves_none_of_its_items(
    sent: dict[str, Received],
) -> None:
    """Two dispatchers on one provider account: the webhook of the one that
    did not send a message finds no item of it (only its address)."""
    spec = next(s for s in SPECS if s.code == "mailersend")
    keys, fields = _keys("mailersend", None)
    other = make_dispatcher(
        delivery_mode=Dispatcher.DeliveryMode.API, esp_provider="mailersend", **fields
    )
    CampaignItem.objects.filter(contact__email="user0@example.org").update(queue_id="ms-1")
    url = reverse("bounces:esp_tracking", args=["mailersend", other.pk])
    hook = Hook(spec, other, keys, {"user0@example.org": "ms-1"}, url)

    assert hook.post(hook.request("bounce", "user0@example.org")) == 200

    bounce = Bounce.objects.get()
    assert (bounce.item, bounce.matched_by) == (None, "address")
    assert item_of("user0@example.org").status == S.SENT  # the sender's item is untouched


# --- refused -------------------------------------------------------------------------

FORGERIES = ["no basic auth", "wrong basic auth", "bad signature", "stale", "no key configured"]


def _forgery_applies(spec: Spec, forgery: str) -> bool:
    if forgery == "bad signature":
        return spec.signs  # the others sign nothing: the shared secret is all
    if forgery == "stale":
        return spec.fresh  # the others sign no timestamp: a replay is caught by its event id
    if forgery == "no key configured":
        return spec.code != "unisender_go"  # it signs with the API key, always there
    return True


FORGED = [
    pytest.param(spec, forgery, id=f"{spec.code}-{forgery}")
    for spec in SPECS
    for forgery in FORGERIES
    if _forgery_applies(spec, forgery)
]


@pytest.mark.parametrize(("hook", "forgery"), FORGED, indirect=["hook"])
def test_forged_unauthenticated_and_stale_requests_change_nothing(
    hook: Hook, forgery: str, settings: Any
) -> None:
    spec = hook.spec
    signed, auth = hook.request("bounce", "user0@example.org"), SECRET
    if forgery == "no basic auth":
        auth = None
    elif forgery == "wrong basic auth":
        auth = "herald:guessed"
    elif forgery == "bad signature":
        if spec.code == "amazon_ses":  # Amazon's certificate URL, someone else's key
            forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            other = Keys("", (hook.keys.private[0], forger))
        else:
            other, _ = _keys(spec.code, None)
        if spec.code == "mandrill":
            other.private = hook.dispatcher.pk
        payload = spec.event(
            "bounce", "user0@example.org", hook.ids["user0@example.org"], time.time()
        )
        signed = spec.sign(payload, other, time.time())
    elif forgery == "stale":
        signed = hook.request(
            "bounce", "user0@example.org", when=time.time() - settings.HERALD_WEBHOOK_MAX_AGE - 60
        )
    elif forgery == "no key configured":
        if not spec.signs:  # the secret is the key: none configured, all refused
            settings.HERALD_WEBHOOK_SECRET = []
        Dispatcher.objects.filter(pk=hook.dispatcher.pk).update(
            esp_webhook_key="", esp_sns_topic_arn=""
        )
    before = state()

    assert hook.post(signed, auth=auth) in (400, 401, 403)

    assert state() == before
    assert item_of("user0@example.org").status == S.SENT


def test_a_webhook_for_another_dispatcher_or_provider_is_not_found(hook: Hook) -> None:
    signed = hook.request("bounce", "user0@example.org")
    other = "postmark" if hook.spec.code != "postmark" else "brevo"
    for url in (
        reverse("bounces:esp_tracking", args=[hook.spec.code, hook.dispatcher.pk + 1000]),
        reverse("bounces:esp_tracking", args=[other, hook.dispatcher.pk]),
    ):
        hook.url = url
        assert hook.post(signed) == 404
    assert not Bounce.objects.exists()


# --- in any order ----------------------------------------------------------------------


def test_events_replayed_three_times_in_shuffled_order_leave_the_same_state(
    hook: Hook,
) -> None:
    kinds = hook.spec.kinds
    emails = sorted(hook.ids)
    requests = [hook.request(kind, email) for email in emails for kind in kinds]
    for signed in requests:
        assert hook.post(signed) == 200
    expected = state()
    # Whatever came last, the strongest state stands: complaint over
    # unsubscribe over bounce, and nothing goes back to active.
    strongest = (
        Contact.Status.COMPLAINED
        if "complaint" in kinds
        else Contact.Status.UNSUBSCRIBED
        if "unsubscribe" in kinds
        else Contact.Status.BOUNCED
    )
    assert {status for _, status in expected["contacts"]} == {strongest}

    for seed in (1, 2, 3):
        Bounce.objects.all().delete()
        Suppression.objects.all().delete()
        Contact.objects.update(status=Contact.Status.ACTIVE)
        CampaignItem.objects.update(status=S.SENT, provider_status="")
        replay = requests * 3
        random.Random(seed).shuffle(replay)
        for signed in replay:
            assert hook.post(signed) == 200
        assert state() == expected, f"seed {seed}"


# --- Amazon SES: SNS ---------------------------------------------------------------


@pytest.fixture
def ses(sent: dict[str, Received], sns_server: SnsServer) -> Hook:
    dispatcher = make_dispatcher(
        delivery_mode=Dispatcher.DeliveryMode.API,
        esp_provider="amazon_ses",
        esp_api_key="AKIDEXAMPLE:wJalrXUtnFEMI",
        esp_sns_topic_arn=TOPIC,
    )
    url = reverse("bounces:esp_tracking", args=["amazon_ses", dispatcher.pk])
    spec = next(s for s in SPECS if s.code == "amazon_ses")
    return Hook(spec, dispatcher, Keys("", (sns_server.url, sns_server.key)), {}, url)


def _sns(message: dict[str, str]) -> Signed:
    headers = {"HTTP_X_AMZ_SNS_MESSAGE_TYPE": message["Type"]}
    headers["HTTP_X_AMZ_SNS_MESSAGE_ID"] = message["MessageId"]
    return Signed(json.dumps(message).encode(), "text/plain; charset=UTF-8", headers)


def test_ses_subscription_is_confirmed_only_when_signed_by_sns(
    ses: Hook, sns_server: SnsServer
) -> None:
    signer = (sns_server.url, sns_server.key)
    confirmation = sns_message(
        "SubscriptionConfirmation", "You have chosen to subscribe", time.time(), signer
    )
    forged = sns_message(
        "SubscriptionConfirmation",
        "x",
        time.time(),
        (sns_server.url, rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    )

    assert ses.post(_sns(forged)) == 400
    assert sns_server.confirmed == []
    assert ses.post(_sns(confirmation)) == 200
    assert sns_server.confirmed == [confirmation["SubscribeURL"].removeprefix(sns_server.url)]


def test_ses_refuses_other_topics_and_certificates_not_amazons(
    ses: Hook, sns_server: SnsServer, settings: Any
) -> None:
    payload = ses_event("bounce", "user0@example.org", "ses-1", time.time())
    message = sns_message(
        "Notification", json.dumps(payload), time.time(), (sns_server.url, sns_server.key)
    )
    other_topic = dict(message, TopicArn=TOPIC.replace("herald-events", "someone-else"))
    assert ses.post(_sns(other_topic)) == 400
    # A certificate from a host that is not Amazon SNS's is never fetched.
    settings.HERALD_SNS_URL_PATTERN = r"^https://sns\.[a-z0-9-]+\.amazonaws\.com/"
    assert ses.post(_sns(message)) == 400
    assert ses.post(_sns(message), auth=None) == 401  # SNS sends credentials only when asked
    assert not Bounce.objects.exists()


def test_opens_and_clicks_reported_by_the_provider_reach_the_report(
    sent: dict[str, Received],
) -> None:
    keys, fields = _keys("mailtrap", None)
    dispatcher = make_dispatcher(
        delivery_mode=Dispatcher.DeliveryMode.API, esp_provider="mailtrap", **fields
    )
    Campaign.objects.update(dispatcher=dispatcher)
    CampaignItem.objects.filter(contact__email="user0@example.org").update(queue_id="mt-1")
    spec = next(s for s in SPECS if s.code == "mailtrap")
    hook = Hook(
        spec,
        dispatcher,
        keys,
        {},
        reverse("bounces:esp_tracking", args=["mailtrap", dispatcher.pk]),
    )
    base = mailtrap_event("delivered", "user0@example.org", "mt-1", time.time())["events"][0]
    agent = "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15"
    opened = base | {"event": "open", "event_id": str(uuid.uuid4()), "user_agent": agent}
    clicked = base | {"event": "click", "event_id": str(uuid.uuid4()), "user_agent": agent}
    clicked["url"] = "https://shop.example.com/sale"
    for event in (opened, clicked, opened):
        assert hook.post(spec.sign({"events": [event]}, keys, time.time())) == 200

    campaign = Campaign.objects.get()
    assert (campaign.unique_opens, campaign.unique_clicks) == (1, 1)


@pytest.mark.parametrize("hook", [s for s in SPECS if s.code == "mandrill"], indirect=True)
def test_a_refused_mandrill_request_never_logs_the_secret_in_its_signed_url(
    hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    signed = hook.request("bounce", "user0@example.org")
    signed.headers["HTTP_X_MANDRILL_SIGNATURE"] = "Zm9yZ2Vk"

    assert hook.post(signed) == 400
    assert "incorrect signature" in caplog.text
    assert SECRET.partition(":")[2] not in caplog.text
