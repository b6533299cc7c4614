"""Amazon SNS message signatures, which anymail does not check.

Amazon SES reports events through an SNS topic that POSTs to the webhook.
SNS signs each message with RSA (SignatureVersion 1: SHA1, 2: SHA256)
using a certificate it publishes at SigningCertURL; the URL must be
Amazon's own (https://sns.<region>.amazonaws.com/...), or anyone could
sign with their own certificate. HERALD_SNS_URL_PATTERN says which URLs
are Amazon's; tests point it at a local server that serves a test
certificate.

https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import lru_cache
from typing import Any

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from django.conf import settings


class SnsSignatureError(Exception):
    pass


# The fields SNS signs, in this order, per message type (absent ones skipped).
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_SIGNED_FIELDS["UnsubscribeConfirmation"] = _SIGNED_FIELDS["SubscriptionConfirmation"]
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}


def amazon_url(url: str) -> bool:
    """Whether a URL is on Amazon SNS's own host (certificate, subscription
    confirmation): never one a forged message points at."""
    return bool(re.match(settings.HERALD_SNS_URL_PATTERN, url or ""))


def sns_signature_verify(message: dict[str, Any]) -> None:
    """Raise SnsSignatureError unless Amazon SNS signed this message."""
    fields = _SIGNED_FIELDS.get(message.get("Type", ""))
    algorithm = _HASHES.get(str(message.get("SignatureVersion", "")))
    if fields is None or algorithm is None:
        raise SnsSignatureError("not an SNS message type or signature version Herald knows")
    cert_url = message.get("SigningCertURL", "")
    if not amazon_url(cert_url) or not cert_url.endswith(".pem"):
        raise SnsSignatureError("the signing certificate is not Amazon SNS's")
    signed = "".join(
        f"{name}\n{message[name]}\n" for name in fields if message.get(name) is not None
    )
    try:
        signature = base64.b64decode(message.get("Signature", ""), validate=True)
        _public_key(cert_url).verify(signature, signed.encode(), padding.PKCS1v15(), algorithm())
    except (binascii.Error, InvalidSignature, TypeError) as exc:
        raise SnsSignatureError("the SNS signature does not match") from exc


@lru_cache(maxsize=16)
def _public_key(cert_url: str) -> rsa.RSAPublicKey:
    # SNS signs with a handful of certificates, rotated rarely: fetched once
    # per process. A fetch that fails raises (500), so SNS retries later.
    response = requests.get(cert_url, timeout=10)
    response.raise_for_status()
    key = x509.load_pem_x509_certificate(response.content).public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnsSignatureError("the SNS certificate has no RSA key")
    return key


def sns_subscription_confirm(message: dict[str, Any]) -> None:
    """Visit the SubscribeURL of a verified SubscriptionConfirmation: it is
    signed by Amazon and needs no AWS credentials."""
    url = message.get("SubscribeURL", "")
    if not amazon_url(url):
        raise SnsSignatureError("the SubscribeURL is not Amazon SNS's")
    requests.get(url, timeout=10).raise_for_status()
