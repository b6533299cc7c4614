"""Reports as a receiving mail server writes them, about a message Herald
really sent (so the VERP return path and Message-ID are the real ones)."""

from __future__ import annotations

from email.message import EmailMessage

from tests.smtp import Received


def _headers(sent: Received) -> str:
    lines = [f"Return-Path: <{sent.sender}>"]
    lines += [f"{name}: {value}" for name, value in sent.message.items()]
    return "\n".join(lines) + "\n"


def _report(kind: str, to: str, subject: str, text: str, fields: str, sent: Received) -> bytes:
    boundary = "=_herald_test_report"
    return (
        f"From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\n"
        f"To: {to}\nDelivered-To: {to}\nSubject: {subject}\n"
        f"Auto-Submitted: auto-replied\nMIME-Version: 1.0\n"
        f'Content-Type: multipart/report; report-type={kind}; boundary="{boundary}"\n\n'
        f"--{boundary}\nContent-Type: text/plain\n\n{text}\n"
        f"--{boundary}\nContent-Type: message/{kind}\n\n{fields}\n"
        f"--{boundary}\nContent-Type: text/rfc822-headers\n\n{_headers(sent)}\n"
        f"--{boundary}--\n"
    ).encode()


def dsn(
    sent: Received,
    *,
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
    action: str = "failed",
    delivered_to: str | None = None,
) -> bytes:
    """A Postfix-shaped RFC 3464 report for the one recipient of ``sent``."""
    rcpt = sent.recipients[0]
    fields = (
        "Reporting-MTA: dns; mx.example.org\n\n"
        f"Final-Recipient: rfc822; {rcpt}\nAction: {action}\nStatus: {status}\n"
        f"Diagnostic-Code: {diagnostic.format(rcpt=rcpt)}\n"
    )
    text = f"<{rcpt}>: host mx.example.org said: {status}\n"
    return _report(
        "delivery-status",
        delivered_to or sent.sender,
        "Undelivered Mail Returned to Sender",
        text,
        fields,
        sent,
    )


def arf(sent: Received) -> bytes:
    """An RFC 5965 abuse report (a feedback loop's "this is spam")."""
    fields = (
        "Feedback-Type: abuse\nUser-Agent: ExampleFBL/1.0\nVersion: 1\n"
        f"Original-Mail-From: <{sent.sender}>\nOriginal-Rcpt-To: <{sent.recipients[0]}>\n"
    )
    return _report(
        "feedback-report", "fbl@herald.test", "Abuse report", "An abuse report.", fields, sent
    )


def plain(subject: str, body: str, **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = headers.pop("From", "Someone <someone@example.net>")
    msg["To"] = "bounces@herald.test"
    msg["Subject"] = subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes()
