"""Every message of the corpus (real-shaped reports of Postfix, Exim,
Exchange and Office 365, Gmail, qmail, Sendmail, Yahoo, an ARF complaint,
auto-replies) parses to what tests/bounces/corpus/expected.toml says."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bounces.parsing import Kind, Verdict, classify, message_parse

CORPUS = Path(__file__).parent / "corpus"
EXPECTED = tomllib.loads((CORPUS / "expected.toml").read_text())


def test_every_corpus_message_has_an_expectation() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_it_classifies_the_corpus(name: str) -> None:
    expected = EXPECTED[name]
    report = message_parse((CORPUS / name).read_bytes())

    assert report.verdict == Verdict(expected["verdict"])
    assert report.detector == expected["detector"]
    if "recipient" in expected:
        assert len(report.events) == 1
        event = report.events[0]
        assert event.recipient == expected["recipient"]
        assert event.kind == Kind(expected["kind"])
        assert event.status == expected["status"]
        assert event.kind == Kind.COMPLAINT or event.diagnostic
    else:
        assert report.events == ()
    if "envelope" in expected:
        assert expected["envelope"] in report.envelope_addresses
    if "message_id" in expected:
        assert report.original_message_id == expected["message_id"]


def test_the_dsn_diagnostic_is_kept_raw_and_unfolded() -> None:
    report = message_parse((CORPUS / "postfix_dsn_user_unknown.eml").read_bytes())
    assert report.events[0].diagnostic == (
        "smtp; 550 5.1.1 <jane.doe@example.org>: Recipient address rejected: "
        "User unknown in virtual mailbox table"
    )


def test_it_reads_every_failed_recipient_of_a_dsn_and_skips_delivered_ones() -> None:
    raw = (CORPUS / "postfix_dsn_user_unknown.eml").read_bytes()
    extra = (
        b"Final-Recipient: rfc822; ok@example.org\nAction: delivered\nStatus: 2.0.0\n\n"
        b"Final-Recipient: rfc822; full@example.org\nAction: failed\nStatus: 4.2.2\n"
        b"Diagnostic-Code: smtp; 452 4.2.2 Mailbox full\n\n"
    )
    raw = raw.replace(
        b"\nFinal-Recipient: rfc822; jane.doe", b"\n" + extra + b"Final-Recipient: rfc822; jane.doe"
    )
    report = message_parse(raw)
    assert [(e.recipient, e.kind) for e in report.events] == [
        ("full@example.org", Kind.SOFT),
        ("jane.doe@example.org", Kind.HARD),
    ]


@pytest.mark.parametrize(
    ("status", "diagnostic", "kind"),
    [
        ("5.1.1", "", Kind.HARD),
        ("5.1.10", "", Kind.HARD),
        ("5.2.1", "mailbox disabled", Kind.HARD),
        ("5.4.4", "unable to route", Kind.HARD),
        ("5.2.2", "", Kind.SOFT),
        ("5.0.0", "552 Mailbox is full", Kind.SOFT),
        ("5.7.1", "rejected by policy", Kind.SOFT),
        ("4.4.7", "", Kind.SOFT),
        ("4.7.0", "try again later", Kind.SOFT),
        ("", "smtp; 550 5.1.1 no such user", Kind.HARD),
        ("", "smtp; 550 no such user", Kind.HARD),
        ("", "smtp; 421 too many connections", Kind.SOFT),
        ("", "", Kind.UNKNOWN),
        ("2.0.0", "", Kind.UNKNOWN),
    ],
)
def test_classify(status: str, diagnostic: str, kind: Kind) -> None:
    assert classify(status, diagnostic) == kind


def test_a_message_that_is_not_mail_at_all_is_unrecognised() -> None:
    assert message_parse(b"\x00\xff garbage with no headers").verdict == Verdict.UNRECOGNISED
