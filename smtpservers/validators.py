"""Checks on data that ends up in mail headers or SMTP commands."""

import re

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
    import ipaddress

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
