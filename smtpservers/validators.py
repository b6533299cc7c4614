"""Checks on data that ends up in mail headers or SMTP commands."""

import ipaddress
import re
import ssl

from cryptography import x509
from django.core.exceptions import ValidationError

# CR and LF end a header line; NUL truncates it in some MTAs; the Unicode
# line and paragraph separators and NEL are folded into line breaks by
# some mail software. None of them may reach a header value.
_FORBIDDEN = re.compile("[\r\n\x00\x85\u2028\u2029]")


def validate_header_value(value: str) -> None:
    if value and _FORBIDDEN.search(str(value)):
        raise ValidationError(
            "Line breaks and control characters are not allowed here "
            "(they could inject mail headers).",
            code="header_injection",
        )


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def validate_host(value: str) -> None:
    """Form only: a hostname, an IPv4 or an IPv6 address; no URL, no port."""
    host = value.strip()
    if not host:
        raise ValidationError("Enter the server's host name or IP address.", code="required")
    if host != value or " " in host:
        raise ValidationError("The host must not contain spaces.", code="spaces")
    if "://" in host or "/" in host:
        raise ValidationError(
            "Enter only the host name (e.g. smtp.example.com), not a URL.", code="url"
        )
    try:
        ipaddress.ip_address(host.strip("[]"))
        return
    except ValueError:
        pass
    if ":" in host:
        raise ValidationError(
            "Enter the port in the Port field, not after the host.", code="port_in_host"
        )
    if not _HOSTNAME.match(host):
        raise ValidationError("This is not a valid host name.", code="invalid")


def validate_helo_name(value: str) -> None:
    """What we announce in EHLO: a host name or an address literal ([192.0.2.1])."""
    validate_header_value(value)
    if not value:
        return
    if " " in value or "\t" in value:
        raise ValidationError("The HELO/EHLO name must not contain spaces.", code="spaces")
    literal = value.startswith("[") and value.endswith("]")
    if literal:
        address = value[1:-1].removeprefix("IPv6:")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValidationError(
                "An address literal must be an IP address in brackets, e.g. [192.0.2.1].",
                code="invalid",
            ) from None
        return
    if not _HOSTNAME.match(value):
        raise ValidationError(
            "Enter this machine's host name (e.g. mail.example.com) or an address "
            "literal such as [192.0.2.1].",
            code="invalid",
        )


def validate_ca_bundle(value: str) -> None:
    """One or more PEM certificates that the server's chain must lead to."""
    if not value or not value.strip():
        return
    if "-----BEGIN CERTIFICATE-----" not in value:
        raise ValidationError(
            "Paste the CA certificates in PEM form (blocks starting with "
            "-----BEGIN CERTIFICATE-----).",
            code="not_pem",
        )
    if "PRIVATE KEY-----" in value:
        raise ValidationError(
            "This contains a private key. Paste only the CA certificates; never a private key.",
            code="private_key",
        )
    try:
        certificates = x509.load_pem_x509_certificates(value.encode())
    except ValueError:
        raise ValidationError(
            "The CA bundle could not be read: a certificate block is damaged or incomplete.",
            code="invalid_pem",
        ) from None
    try:
        ssl.create_default_context(cadata=value)
    except ssl.SSLError as exc:
        raise ValidationError(
            "The CA bundle was read but cannot be used for verification (%(reason)s).",
            code="unusable",
            params={"reason": exc.reason or exc},
        ) from None
    if not certificates:  # pragma: no cover - load_pem_x509_certificates raises first
        raise ValidationError("The CA bundle holds no certificate.", code="empty")


_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,199}$")


def validate_tenant(value: str) -> None:
    """A Microsoft Entra tenant: a GUID, a domain, or organizations/common.
    It becomes a path segment of the authority URL, so nothing else passes."""
    if value and not _TENANT.match(value):
        raise ValidationError(
            "Enter the tenant ID (a GUID), its domain (contoso.onmicrosoft.com), or "
            "“organizations”.",
            code="invalid",
        )
