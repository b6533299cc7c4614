"""Email service API delivery: what the provider receives, and how its
answer becomes each item's status. Anymail's test backend stands in for
"any provider"; Postmark's real HTTP API shape is answered by a local
server the dispatcher's endpoint URL points at."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from anymail.backends.test import EmailBackend as AnymailTestBackend
from anymail.exceptions import AnymailAPIError
from anymail.message import AnymailRecipientStatus
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from campaigns import services
from campaigns.models import Campaign, CampaignItem
from dispatchers import providers
from dispatchers.models import Dispatcher
from dispatchers.services import dispatcher_connection_test
from dispatchers.transports import ConnectionLost, Outcome
from dispatchers.transports.esp import ApiTransport
from tests.helpers import make_audience, make_campaign, make_dispatcher

from .postmark import TOKEN, PostmarkServer

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


class ScriptedBackend(AnymailTestBackend):
    """Anymail's test backend, answering with what the test scripts next."""

    next_response: Any = None

    def post_to_esp(self, payload: Any, message: Any) -> Any:
        if ScriptedBackend.next_response is not None:
            message.anymail_test_response = ScriptedBackend.next_response
        return super().post_to_esp(payload, message)


@pytest.fixture
def transport() -> Iterator[ApiTransport]:
    ScriptedBackend.next_response = None
    mail.outbox = []
    transport = ApiTransport(
        backend=f"{__name__}.ScriptedBackend", options={}, provider="Test provider"
    )
    with transport:
        yield transport


def built_message() -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = "Your November news"
    msg["From"] = "Herald News <news@herald.test>"
    msg["To"] = "Ann Lee <ann@example.org>"
    msg["Reply-To"] = "desk@herald.test"
    msg["Message-ID"] = "<tok123@herald.test>"
    msg["List-Unsubscribe"] = "<https://herald.test/u/tok123>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["DKIM-Signature"] = "v=1; a=rsa-sha256; d=herald.test; s=s1; b=abc"
    msg.set_content("Dear Ann,\nour news.\n")
    msg.add_alternative("<p>Dear Ann,</p>", subtype="html")
    return msg


def send(transport: ApiTransport) -> Any:
    return transport.send(built_message(), sender="b@herald.test", recipient="ann@example.org")


def test_the_provider_gets_the_message_fields_and_headers(transport: ApiTransport) -> None:
    result = send(transport)

    assert result.outcome is Outcome.ACCEPTED
    sent = mail.outbox[0]
    assert sent.subject == "Your November news"
    assert sent.from_email == "Herald News <news@herald.test>"
    assert sent.to == ["Ann Lee <ann@example.org>"]
    assert sent.reply_to == ["desk@herald.test"]
    assert sent.body == "Dear Ann,\nour news.\n"
    assert sent.alternatives[0][0] == "<p>Dear Ann,</p>\n"
    assert sent.extra_headers["List-Unsubscribe"] == "<https://herald.test/u/tok123>"
    assert sent.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert sent.extra_headers["Message-ID"] == "<tok123@herald.test>"
    # The provider rebuilds and signs the message: our signature would not verify.
    assert "DKIM-Signature" not in sent.extra_headers


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("sent", Outcome.ACCEPTED),
        ("queued", Outcome.ACCEPTED),
        ("rejected", Outcome.PERMANENT),
        ("invalid", Outcome.PERMANENT),
        ("failed", Outcome.TRANSIENT),
    ],
)
def test_the_providers_recipient_status_decides_the_outcome(
    transport: ApiTransport, status: str, outcome: Outcome
) -> None:
    ScriptedBackend.next_response = {
        "recipient_status": {
            "ann@example.org": AnymailRecipientStatus(message_id="esp-42", status=status)
        }
    }

    result = send(transport)

    assert result.outcome is outcome
    if outcome is Outcome.ACCEPTED:
        assert result.queue_id == "esp-42"


def api_error(status_code: int, body: bytes = b'{"message": "no"}') -> AnymailAPIError:
    response = requests.Response()
    response.status_code = status_code
    response.reason = "Reason"
    response._content = body
    return AnymailAPIError("API error", status_code=status_code, response=response)


@pytest.mark.parametrize(
    ("status_code", "outcome"),
    [
        (400, Outcome.PERMANENT),
        (422, Outcome.PERMANENT),
        (429, Outcome.TRANSIENT),
        (500, Outcome.TRANSIENT),
        (503, Outcome.TRANSIENT),
    ],
)
def test_api_errors_are_permanent_for_a_refused_message_and_transient_for_a_busy_service(
    transport: ApiTransport, status_code: int, outcome: Outcome
) -> None:
    ScriptedBackend.next_response = api_error(status_code)

    result = send(transport)

    assert result.outcome is outcome
    assert result.code == status_code
    assert "Test provider" in result.text


def test_a_refused_key_stops_the_batch_until_an_administrator_acts(
    transport: ApiTransport,
) -> None:
    ScriptedBackend.next_response = api_error(401)

    with pytest.raises(ConnectionLost) as lost:
        send(transport)

    assert lost.value.retry_pointless
    assert "refused the API key" in str(lost.value)


# --- Postmark over HTTP --------------------------------------------------------


@pytest.fixture
def postmark() -> Iterator[PostmarkServer]:
    with PostmarkServer() as server:
        yield server


def postmark_dispatcher(postmark: PostmarkServer, key: str = TOKEN) -> Dispatcher:
    return make_dispatcher(
        delivery_mode=Dispatcher.DeliveryMode.API,
        esp_provider="postmark",
        esp_api_key=key,
        esp_api_url=postmark.url,
        reply_to="desk@herald.test",
    )


def send_campaign(dispatcher: Dispatcher, count: int) -> Campaign:
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(count)], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    while (batch := services.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
        services.batch_send(batch_id=batch.pk)
    return campaign


def item(address: str) -> CampaignItem:
    return CampaignItem.objects.get(contact__email=address)


def test_a_campaign_goes_out_as_postmark_email_requests(postmark: PostmarkServer) -> None:
    campaign = send_campaign(postmark_dispatcher(postmark), 2)

    requests_seen = sorted(postmark.fake.requests, key=lambda r: r.body["To"])
    assert [(r.method, r.path) for r in requests_seen] == [("POST", "/email")] * 2
    first = requests_seen[0]
    assert first.headers["x-postmark-server-token"] == TOKEN
    assert first.headers["content-type"].startswith("application/json")
    body = first.body
    assert body["From"] == "Herald News <news@herald.test>"
    assert "user0@example.org" in body["To"]
    assert body["Subject"] == "Hello First0"
    assert body["ReplyTo"] == "desk@herald.test"
    assert "Dear First0 Last0" in body["TextBody"]
    assert "<p>Dear First0,</p>" in body["HtmlBody"]
    headers = {h["Name"]: h["Value"] for h in body["Headers"]}
    sent = item("user0@example.org")
    assert headers["Message-ID"].startswith(f"<{sent.token}@")
    assert headers["List-Unsubscribe"].startswith("<http")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["Feedback-ID"].startswith(f"{campaign.pk}:campaign")
    assert sent.status == S.SENT
    assert len(sent.queue_id) == 36  # Postmark's MessageID


def test_postmarks_answers_become_sent_failed_and_deferred(postmark: PostmarkServer) -> None:
    postmark.fake.inactive.add("user1@example.org")
    postmark.fake.scripted["user2@example.org"] = (500, "Internal Server Error")

    send_campaign(postmark_dispatcher(postmark), 3)

    assert item("user0@example.org").status == S.SENT
    inactive = item("user1@example.org")
    assert inactive.status == S.FAILED
    assert "Postmark" in inactive.smtp_response
    busy = item("user2@example.org")
    assert busy.status == S.DEFERRED
    assert busy.smtp_code == 500
    assert busy.next_attempt_at is not None


def test_a_wrong_postmark_token_sends_nothing_and_stops_the_dispatcher(
    postmark: PostmarkServer,
) -> None:
    dispatcher = postmark_dispatcher(postmark, key="wrong-token")

    send_campaign(dispatcher, 2)

    dispatcher.refresh_from_db()
    assert not dispatcher.is_enabled
    assert "refused the API key (401)" in dispatcher.paused_reason
    assert set(CampaignItem.objects.values_list("status", flat=True)) == {S.PENDING}


def test_an_unreachable_api_puts_the_batch_back(postmark: PostmarkServer) -> None:
    dispatcher = postmark_dispatcher(postmark)
    dispatcher.esp_api_url = "http://127.0.0.1:9/"  # discard port: nothing listens
    dispatcher.save()

    send_campaign(dispatcher, 2)

    assert set(CampaignItem.objects.values_list("status", flat=True)) == {S.PENDING}
    dispatcher.refresh_from_db()
    assert "Postmark API unreachable" in dispatcher.last_error


def test_test_connection_tells_whether_the_postmark_token_works(postmark: PostmarkServer) -> None:
    good = dispatcher_connection_test(dispatcher=postmark_dispatcher(postmark))
    bad = dispatcher_connection_test(dispatcher=postmark_dispatcher(postmark, key="wrong"))

    assert good.ok is True
    assert "Postmark accepted the API key" in good.message
    assert bad.ok is False
    assert "Postmark refused the API key (401)" in bad.message
    assert [r.path for r in postmark.fake.requests] == ["/server", "/server"]


def test_test_connection_says_when_a_provider_cannot_be_checked() -> None:
    dispatcher = make_dispatcher(
        delivery_mode=Dispatcher.DeliveryMode.API, esp_provider="mandrill", esp_api_key="k"
    )

    report = dispatcher_connection_test(dispatcher=dispatcher)

    assert report.ok is None
    assert "offers no way to check a key without sending" in report.message


def test_the_test_connection_action_shows_the_verdict_in_the_admin(
    postmark: PostmarkServer, administrator_client: Any
) -> None:
    dispatcher = postmark_dispatcher(postmark, key="wrong-token")

    response = administrator_client.post(
        "/admin/dispatchers/dispatcher/",
        {"action": "test_connection", "_selected_action": [dispatcher.pk], "index": "0"},
        follow=True,
    )

    assert f"{dispatcher.name}: Postmark refused the API key (401)." in response.content.decode()


class _SesV2(BaseHTTPRequestHandler):
    """Amazon SES v2's SendEmail endpoint: 200 with a MessageId."""

    seen: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _SesV2.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        data = json.dumps({"MessageId": "0100018c-ses-id"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_amazon_ses_signs_with_the_access_key_pair_from_the_api_key_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    _SesV2.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SesV2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dispatcher = make_dispatcher(
            delivery_mode=Dispatcher.DeliveryMode.API,
            esp_provider="amazon_ses",
            esp_api_key="AKIDEXAMPLE:wJalrXUtnFEMI",
            esp_api_url=f"http://127.0.0.1:{server.server_address[1]}",
        )
        with ApiTransport.for_dispatcher(dispatcher) as transport:
            result = send(transport)
    finally:
        server.shutdown()
        server.server_close()

    assert result.outcome is Outcome.ACCEPTED
    assert result.queue_id == "0100018c-ses-id"
    ((path, headers, body),) = _SesV2.seen
    assert path == "/v2/email/outbound-emails"
    assert "Credential=AKIDEXAMPLE/" in headers["authorization"]
    assert "wJalrXUtnFEMI" not in json.dumps(headers)
    assert body["Destination"]["ToAddresses"] == ["ann@example.org"]


@pytest.mark.parametrize("provider", sorted(providers.PROVIDERS))
def test_the_dispatcher_page_shows_the_webhook_url_to_paste_into_the_provider(
    provider: str, administrator_client: Client, settings: Any
) -> None:
    settings.HERALD_PUBLIC_URL = "https://herald.example.org"
    settings.HERALD_WEBHOOK_SECRET = ["herald:s3cret-hook"]
    settings.HERALD_MAILGUN_WEBHOOK_SIGNING_KEY = ""
    dispatcher = make_dispatcher(
        delivery_mode=Dispatcher.DeliveryMode.API, esp_provider=provider, esp_api_key="k:s"
    )
    url = reverse("admin:dispatchers_dispatcher_change", args=[dispatcher.pk])

    page = administrator_client.get(url).content.decode()
    webhook = f"https://herald:s3cret-hook@herald.example.org/webhooks/{provider}/{dispatcher.pk}/"
    assert webhook in page
    assert "Events to switch on: " + escape(providers.PROVIDERS[provider].webhook_events) in page
    if providers.PROVIDERS[provider].webhook_key:
        assert "Enter the webhook signing key below" in page
    if provider == "amazon_ses":
        assert "Enter the SNS topic ARN below" in page

    settings.HERALD_WEBHOOK_SECRET = []
    page = administrator_client.get(url).content.decode()
    assert "Set HERALD_WEBHOOK_SECRET (user:password) first" in page


def test_the_webhook_signing_key_is_checked_stored_encrypted_and_never_shown(
    administrator_client: Client,
) -> None:
    dispatcher = make_dispatcher(
        delivery_mode=Dispatcher.DeliveryMode.API,
        esp_provider="postal",
        esp_api_key="api-key",
        esp_api_url="https://postal.example.com",
        esp_webhook_key="not a public key",
    )
    with pytest.raises(ValidationError) as refused:
        dispatcher.full_clean()
    assert "has no spaces" in str(refused.value.message_dict["esp_webhook_key"])
    dispatcher.esp_webhook_key = "bm90LWEta2V5"
    with pytest.raises(ValidationError) as refused:
        dispatcher.full_clean()
    assert "Not a public key" in str(refused.value.message_dict["esp_webhook_key"])

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = base64.b64encode(der).decode()
    dispatcher.esp_webhook_key = key
    dispatcher.full_clean()
    dispatcher.save()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT esp_webhook_key FROM dispatchers_dispatcher WHERE id = %s", [dispatcher.pk]
        )
        assert key not in cursor.fetchone()[0]  # ciphertext at rest
    url = reverse("admin:dispatchers_dispatcher_change", args=[dispatcher.pk])
    page = administrator_client.get(url).content.decode()
    assert key not in page
    assert 'name="esp_webhook_key"' in page
    assert "Signature checked with the stored webhook signing key" in page
