"""DKIM signing of finished messages.

A Signer is made once per batch for the dispatcher's From domain (the key
is read and decrypted then), and signs each message just before the
transport sends it, over the very bytes the transports put on the wire
(``message_bytes``), whether a prebuilt WireMessage or an EmailMessage.
"""

from __future__ import annotations

from dataclasses import dataclass

import dkim

from smtpservers.encryption import reveal

from .models import Dispatcher, SenderDomain
from .transports import ConnectionLost
from .transports.base import Message, WireMessage, message_bytes

SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
)


@dataclass(frozen=True)
class Signer:
    domain: str
    selector: str
    private_key: bytes

    def __repr__(self) -> str:  # the key must not reach a log line
        return f"Signer(domain={self.domain!r}, selector={self.selector!r})"

    def sign(self, message: Message) -> Message:
        """Add a DKIM-Signature (relaxed/relaxed) to ``message`` and return
        it: a WireMessage gets the header line put in front of its bytes (a
        new object), an EmailMessage gets it set in place."""
        headers = [name.encode() for name in SIGNED_HEADERS if name in message]
        try:
            signature = dkim.sign(
                message_bytes(message),
                self.selector.encode(),
                self.domain.encode(),
                self.private_key,
                canonicalize=(b"relaxed", b"relaxed"),
                include_headers=headers,
            )
        except dkim.DKIMException as exc:
            # A key that cannot sign fails every message alike: stop the
            # dispatcher with the reason rather than send unsigned mail.
            raise ConnectionLost(
                f"DKIM signing for {self.domain} failed: {exc}", retry_pointless=True
            ) from exc
        # Kept raw: dkimpy already folded it, and re-folding by the email
        # package could break the b= value it signed.
        value = signature.decode().partition(":")[2].strip()
        if isinstance(message, WireMessage):
            return message.with_header_line("DKIM-Signature", value, signature)
        message.set_raw("DKIM-Signature", value)
        return message


def signer_for(*, dispatcher: Dispatcher) -> Signer | None:
    """The signer for the dispatcher's From domain, or None when that
    domain has no active key (unknown, archived, or not yet verified)."""
    domain = SenderDomain.objects.filter(
        domain=dispatcher.from_domain, archived=False, key_active=True
    ).first()
    if domain is None:
        return None
    return Signer(
        domain=domain.domain,
        selector=domain.dkim_selector,
        private_key=reveal(domain.dkim_private_key).encode(),
    )
