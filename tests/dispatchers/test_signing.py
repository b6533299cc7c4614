"""DKIM signing: every message sent through a real SMTP server verifies
against the key published in the test DNS server, and stops verifying
once a signed header is altered."""

from __future__ import annotations

import base64
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import formatdate

import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from config.embedded import free_port
from dispatchers.domains import dkim_dnsfunc, sender_domain_archive, sender_domain_verify
from dispatchers.models import Dispatcher, SenderDomain
from dispatchers.pool import SendPool
from dispatchers.signing import SIGNED_HEADERS, signer_for
from dispatchers.transports.base import message_bytes
from dispatchers.transports.smtp import SmtpTransport
from smtpservers.models import SmtpServer
from tests.smtp import SinkHandler

from .conftest import DOMAIN, publish_correct
from .dns import Zone


class RawHandler(SinkHandler):
    """Keeps the bytes as received: DKIM verifies those, not a re-serialisation."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        self.raw.append(envelope.original_content or b"")
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def sink() -> Iterator[tuple[int, RawHandler]]:
    handler = RawHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, handler
    controller.stop()


@pytest.fixture
def verified(zone: Zone, domain: SenderDomain, dispatcher: Dispatcher) -> SenderDomain:
    publish_correct(zone, domain)
    assert sender_domain_verify(domain=domain)
    return domain


def campaign_message(number: int) -> EmailMessage:
    """Shaped like campaigns.messages.message_build makes them."""
    msg = EmailMessage()
    msg["Subject"] = f"Grüße, issue {number}"
    msg["From"] = f"Example News <news@{DOMAIN}>"
    msg["To"] = f"Reader {number} <reader{number}@example.net>"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<token{number}@{DOMAIN}>"
    msg["List-Unsubscribe"] = f"<https://herald.example.org/u/t{number}/>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["Feedback-ID"] = "7:campaign:herald"
    msg.set_content(f"Hello reader {number}.\n" + "A long line of text. " * 20)
    msg.add_alternative(f"<p>Hello reader {number}.</p>", subtype="html")
    return msg


def send_through_pool(port: int, dispatcher: Dispatcher, messages: list[EmailMessage]) -> None:
    dispatcher.smtp_server.port = port
    dispatcher.smtp_server.save()
    pool: SendPool[int] = SendPool(
        lambda: SmtpTransport(server=dispatcher.smtp_server),
        2,
        signer=signer_for(dispatcher=dispatcher),
    )
    try:
        for number, message in enumerate(messages):
            pool.submit(
                number,
                message,
                sender=f"bounces@{DOMAIN}",
                recipient=message["To"].addresses[0].addr_spec,
            )
        results = [c.result for c in pool.drain()]
    finally:
        pool.close()
    assert all(r is not None and r.code == 250 for r in results)


def tags(raw: bytes) -> dict[str, str]:
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    value = "".join(str(message["DKIM-Signature"]).split())
    return dict(part.split("=", 1) for part in value.split(";") if part)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_every_message_sent_verifies_against_the_published_key(
    sink: tuple[int, RawHandler], verified: SenderDomain, dispatcher: Dispatcher
) -> None:
    port, handler = sink

    send_through_pool(port, dispatcher, [campaign_message(n) for n in range(4)])

    assert len(handler.raw) == 4
    for raw in handler.raw:
        assert dkim.verify(raw, dnsfunc=dkim_dnsfunc) is True
        signature = tags(raw)
        assert (signature["d"], signature["s"]) == (DOMAIN, verified.dkim_selector)
        assert signature["c"] == "relaxed/relaxed"
        assert signature["h"].lower().split(":") == [h.lower() for h in SIGNED_HEADERS]


ALTERATIONS = [
    (b"Subject: ", b"Subject: Re: "),
    (b"https://herald.example.org/u/", b"https://evil.example/u/"),  # List-Unsubscribe
    (b"Feedback-ID: 7:", b"Feedback-ID: 8:"),
    (b"Hello reader", b"Hi reader"),  # the body
]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_altered_message_fails_verification(
    sink: tuple[int, RawHandler], verified: SenderDomain, dispatcher: Dispatcher
) -> None:
    port, handler = sink
    send_through_pool(port, dispatcher, [campaign_message(1)])
    raw = handler.raw[0]
    assert dkim.verify(raw, dnsfunc=dkim_dnsfunc) is True

    for original, altered in ALTERATIONS:
        assert original in raw
        assert dkim.verify(raw.replace(original, altered, 1), dnsfunc=dkim_dnsfunc) is False


def test_a_domain_whose_key_never_verified_does_not_sign(
    zone: Zone, domain: SenderDomain, dispatcher: Dispatcher
) -> None:
    sender_domain_verify(domain=domain)  # nothing published

    assert signer_for(dispatcher=dispatcher) is None


def test_an_archived_domain_does_not_sign(verified: SenderDomain, dispatcher: Dispatcher) -> None:
    assert signer_for(dispatcher=dispatcher) is not None

    sender_domain_archive(domain=verified)

    assert signer_for(dispatcher=dispatcher) is None


def test_the_signer_never_shows_its_key(verified: SenderDomain, dispatcher: Dispatcher) -> None:
    signer = signer_for(dispatcher=dispatcher)

    assert "PRIVATE" not in repr(signer) and "PRIVATE" not in str(signer)


def test_a_campaign_leaves_signed_and_aligned_through_the_whole_pipeline(
    verified: SenderDomain, dispatcher: Dispatcher, sink: tuple[int, RawHandler]
) -> None:
    from campaigns import services
    from campaigns.models import Campaign
    from tests.helpers import make_audience, make_campaign

    port, handler = sink
    SmtpServer.objects.filter(pk=dispatcher.smtp_server_id).update(port=port)
    make_campaign(dispatcher=dispatcher, lists=[make_audience(3)], status=Campaign.Status.SCHEDULED)
    services.items_generate()
    services.batch_send(batch_id=services.batch_claim(dispatcher_id=dispatcher.pk).pk)

    assert len(handler.raw) == 3
    for raw in handler.raw:
        assert dkim.verify(raw, dnsfunc=dkim_dnsfunc) is True
        signature = tags(raw)
        assert signature["d"] == DOMAIN  # aligned with From: news@example.org
        assert "list-unsubscribe" in signature["h"].lower()
    assert all(r.sender.endswith(f"@{DOMAIN}") for r in handler.received)  # return path too


def test_prebuilt_messages_with_non_ascii_names_verify_and_break_when_altered(
    verified: SenderDomain, dispatcher: Dispatcher, sink: tuple[int, RawHandler]
) -> None:
    from campaigns import services
    from campaigns.models import Campaign, Contact
    from tests.helpers import make_audience, make_campaign

    port, handler = sink
    SmtpServer.objects.filter(pk=dispatcher.smtp_server_id).update(port=port)
    audience = make_audience(2)
    Contact.objects.filter(email="user0@example.org").update(first_name="Zoë", last_name="山田")
    Contact.objects.filter(email="user1@example.org").update(first_name="Ann 🎉")
    make_campaign(dispatcher=dispatcher, lists=[audience], status=Campaign.Status.SCHEDULED)
    services.items_generate()
    services.batch_send(batch_id=services.batch_claim(dispatcher_id=dispatcher.pk).pk)

    assert len(handler.raw) == 2
    for raw in handler.raw:
        assert dkim.verify(raw, dnsfunc=dkim_dnsfunc) is True
        to_line = next(line for line in raw.split(b"\r\n") if line.startswith(b"To: "))
        altered = raw.replace(to_line, to_line.replace(b"To: ", b"To: x"), 1)
        assert dkim.verify(altered, dnsfunc=dkim_dnsfunc) is False
    names = {str(r.message["To"].addresses[0].display_name) for r in handler.received}
    assert names == {"Zoë 山田", "Ann 🎉 Last1"}


def test_folded_headers_and_untidy_whitespace_still_verify() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from dispatchers.signing import Signer
    from dispatchers.transports.base import WireMessage

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    raw = (
        b"Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\n =?utf-8?b?bW9yZQ==?=\r\n"
        b"From:  Example   News <news@example.org>\r\n"
        b'To: "Lee, Ann"\r\n\t<ann@example.net>\r\n'
        b"Message-ID: <t1@example.org>\r\n\r\n"
        b"trailing spaces   \r\n\ttabbed\t line\r\n\r\n\r\n"
    )
    signer = Signer(domain="example.org", selector="s1", private_key=pem)

    signed = signer.sign(WireMessage(raw, {"Subject": "", "From": "", "To": "", "Message-ID": ""}))

    data = message_bytes(signed)
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: record) is True
    assert (
        dkim.verify(data.replace(b"Ann", b"Bob"), dnsfunc=lambda name, timeout=5: record) is False
    )
    assert (
        dkim.verify(data.replace(b"tabbed", b"tapped"), dnsfunc=lambda n, timeout=5: record)
        is False
    )
