"""The sender-domain admin and what dispatchers show and do about their domain."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from dispatchers.domains import sender_domain_verify
from dispatchers.models import Dispatcher, SenderDomain
from smtpservers.encryption import reveal

from .conftest import DOMAIN, publish_correct
from .dns import Zone

pytestmark = pytest.mark.django_db


def change_url(domain: SenderDomain) -> str:
    return reverse("admin:dispatchers_senderdomain_change", args=[domain.pk])


def test_adding_a_domain_makes_its_key_and_shows_the_records_to_publish(
    administrator_client: Client, dispatcher: Dispatcher
) -> None:
    response = administrator_client.post(
        reverse("admin:dispatchers_senderdomain_add"),
        {"domain": "Example.ORG", "dmarc_report_email": "dmarc@example.org"},
    )
    assert response.status_code == 302
    domain = SenderDomain.objects.get()
    assert domain.domain == "example.org"
    assert len(domain.dkim_public_key) > 350  # RSA 2048

    html = administrator_client.get(change_url(domain)).content.decode()

    assert "v=spf1 ip4:127.0.0.1 ~all" in html
    assert f"{domain.dkim_selector}._domainkey.example.org" in html
    assert f"v=DKIM1; k=rsa; p={domain.dkim_public_key}" in html
    assert "v=DMARC1; p=none; rua=mailto:dmarc@example.org" in html


def test_a_bad_domain_name_is_refused_and_nothing_is_stored(
    administrator_client: Client,
) -> None:
    response = administrator_client.post(
        reverse("admin:dispatchers_senderdomain_add"), {"domain": "news@example.org"}
    )

    assert "Enter a domain name, such as example.com (no @" in response.content.decode()
    assert not SenderDomain.objects.exists()


def test_the_private_key_is_neither_shown_nor_stored_in_plaintext(
    administrator_client: Client, domain: SenderDomain
) -> None:
    private_pem = reveal(domain.dkim_private_key)
    body = private_pem.splitlines()[1]  # a line of the key itself
    assert private_pem.startswith("-----BEGIN RSA PRIVATE KEY-----")

    html = administrator_client.get(change_url(domain)).content.decode()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT dkim_private_key FROM dispatchers_senderdomain WHERE id = %s", [domain.pk]
        )
        (stored,) = cursor.fetchone()

    assert body not in html and "PRIVATE KEY" not in html
    assert body not in stored and "PRIVATE KEY" not in stored


def test_a_domain_cannot_be_deleted_only_archived_and_stays_listed(
    administrator_client: Client, domain: SenderDomain
) -> None:
    delete = reverse("admin:dispatchers_senderdomain_delete", args=[domain.pk])
    response = administrator_client.post(delete, {"post": "yes"}, follow=True)
    assert "Sender domains are never deleted; archive it instead" in response.content.decode()
    changelist = reverse("admin:dispatchers_senderdomain_changelist")
    bulk = administrator_client.get(changelist).content.decode()
    assert 'value="delete_selected"' not in bulk

    administrator_client.post(
        changelist, {"action": "archive", "_selected_action": [domain.pk]}, follow=True
    )

    domain.refresh_from_db()
    assert domain.archived is True
    assert DOMAIN in administrator_client.get(changelist).content.decode()


def test_the_verify_action_reports_what_is_wrong(
    administrator_client: Client, zone: Zone, domain: SenderDomain
) -> None:
    publish_correct(zone, domain)
    del zone.records[f"_dmarc.{DOMAIN}"]

    response = administrator_client.post(
        reverse("admin:dispatchers_senderdomain_changelist"),
        {"action": "verify", "_selected_action": [domain.pk]},
        follow=True,
    )

    assert (
        f"Sender domain {DOMAIN} is not verified: DMARC: No DMARC record at _dmarc.{DOMAIN}."
        in response.content.decode()
    )


def test_the_new_key_action_shows_the_pending_record(
    administrator_client: Client, domain: SenderDomain
) -> None:
    administrator_client.post(
        reverse("admin:dispatchers_senderdomain_changelist"),
        {"action": "new_key", "_selected_action": [domain.pk]},
    )
    domain.refresh_from_db()

    html = administrator_client.get(change_url(domain)).content.decode()

    assert f"{domain.pending_selector}._domainkey.{DOMAIN}" in html
    assert f"p={domain.pending_public_key}" in html
    assert f"New key {domain.pending_selector} waits for its record to verify" in html


def test_a_dispatcher_in_an_unknown_domain_warns_and_shows_it_unaligned(
    administrator_client: Client, dispatcher: Dispatcher
) -> None:
    html = administrator_client.get(
        reverse("admin:dispatchers_dispatcher_change", args=[dispatcher.pk])
    ).content.decode()

    assert f"“{DOMAIN}” is not a sender domain in Herald" in html
    assert "DKIM: not aligned: no active DKIM key for this domain" in html
    assert f"SPF (return path): aligned ({DOMAIN})" in html


def test_a_dispatcher_in_a_verified_domain_is_aligned(
    administrator_client: Client,
    zone: Zone,
    domain: SenderDomain,
    dispatcher: Dispatcher,
    settings: Any,
) -> None:
    settings.HERALD_BOUNCE_DOMAIN = "bounces.elsewhere.example"
    publish_correct(zone, domain)
    sender_domain_verify(domain=domain)

    html = administrator_client.get(
        reverse("admin:dispatchers_dispatcher_change", args=[dispatcher.pk])
    ).content.decode()

    assert "is not verified" not in html and "not a sender domain" not in html
    assert f"DKIM: aligned (d={DOMAIN})" in html
    assert (
        "SPF (return path): not aligned: bounces.elsewhere.example is not example.org or below it"
        in html
    )


def test_an_unverified_domain_blocks_sending_only_when_required(
    settings: Any, zone: Zone, domain: SenderDomain, dispatcher: Dispatcher
) -> None:
    sender_domain_verify(domain=domain)  # nothing published yet
    assert dispatcher.blocked_reason == ""

    settings.HERALD_REQUIRE_VERIFIED_DOMAINS = True

    assert dispatcher.blocked_reason.startswith(
        f"Sender domain “{DOMAIN}” is not verified (SPF: No SPF record"
    )
    publish_correct(zone, domain)
    sender_domain_verify(domain=domain)
    assert dispatcher.blocked_reason == ""


def test_a_dispatcher_in_an_unknown_or_archived_domain_is_blocked_when_required(
    settings: Any, dispatcher: Dispatcher
) -> None:
    settings.HERALD_REQUIRE_VERIFIED_DOMAINS = True
    assert dispatcher.blocked_reason == f"“{DOMAIN}” is not a sender domain in Herald"

    SenderDomain.objects.create(
        domain=DOMAIN,
        dkim_selector="s1",
        dkim_private_key="k",
        spf_status="ok",
        dkim_status="ok",
        dmarc_status="ok",
        archived=True,
    )

    assert dispatcher.blocked_reason == f"“{DOMAIN}” is not a sender domain in Herald"
