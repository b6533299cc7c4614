"""Verifying a sender domain against a real DNS server, one zone per case."""

from __future__ import annotations

import pytest
from django_celery_beat.models import PeriodicTask

from dispatchers import tasks
from dispatchers.domains import (
    sender_domain_key_new,
    sender_domain_records,
    sender_domain_verify,
)
from dispatchers.models import Dispatcher, SenderDomain
from jobs.models import Job, JobRun, Notification

from .conftest import DOMAIN, dkim_value, publish_correct
from .dns import Zone

pytestmark = pytest.mark.django_db

OK = SenderDomain.Status.OK
FAILED = SenderDomain.Status.FAILED


def checks(domain: SenderDomain) -> dict[str, tuple[str, str]]:
    domain.refresh_from_db()
    return {
        "spf": (domain.spf_status, domain.spf_reason),
        "dkim": (domain.dkim_status, domain.dkim_reason),
        "dmarc": (domain.dmarc_status, domain.dmarc_reason),
    }


def test_a_domain_with_the_records_as_shown_verifies(
    zone: Zone, domain: SenderDomain, dispatcher: Dispatcher
) -> None:
    publish_correct(zone, domain)

    assert sender_domain_verify(domain=domain) is True

    assert checks(domain) == {"spf": (OK, ""), "dkim": (OK, ""), "dmarc": (OK, "")}
    assert domain.verified_at is not None and domain.key_active


def test_the_shown_records_are_the_ones_that_verify(
    zone: Zone, domain: SenderDomain, dispatcher: Dispatcher
) -> None:
    records = sender_domain_records(domain=domain)
    by_purpose = {r.purpose: r for r in records}
    assert by_purpose["SPF"].value == "v=spf1 ip4:127.0.0.1 ~all"
    assert by_purpose["DKIM"].name == f"{domain.dkim_selector}._domainkey.{DOMAIN}"
    assert by_purpose["DKIM"].value == f"v=DKIM1; k=rsa; p={domain.dkim_public_key}"
    assert by_purpose["DMARC"].value == f"v=DMARC1; p=none; rua=mailto:dmarc@{DOMAIN}"
    for record in records:
        if record.type == "TXT":
            zone.txt(record.name, record.value)

    assert sender_domain_verify(domain=domain) is True


def test_a_missing_spf_record_is_reported(zone: Zone, domain: SenderDomain) -> None:
    publish_correct(zone, domain)
    zone.records[DOMAIN] = []

    assert sender_domain_verify(domain=domain) is False

    assert checks(domain)["spf"] == (
        FAILED,
        f"No SPF record: publish a TXT record at {DOMAIN} that starts with v=spf1.",
    )
    assert checks(domain)["dkim"][0] == OK


def test_two_spf_records_are_reported(zone: Zone, domain: SenderDomain) -> None:
    publish_correct(zone, domain)
    zone.txt(DOMAIN, "v=spf1 include:_spf.mailer.example ~all")

    sender_domain_verify(domain=domain)

    assert checks(domain)["spf"] == (
        FAILED,
        f"2 SPF records found at {DOMAIN}; publish exactly one "
        "(receivers treat several as an error).",
    )


def test_an_spf_record_over_the_lookup_limit_is_reported(zone: Zone, domain: SenderDomain) -> None:
    publish_correct(zone, domain)
    zone.records[DOMAIN] = []
    zone.txt(DOMAIN, "v=spf1 include:spf1.example.net include:spf2.example.net ~all")
    zone.txt("spf1.example.net", "v=spf1 " + " ".join(f"a:h{i}.example.net" for i in range(5)))
    zone.txt("spf2.example.net", "v=spf1 " + " ".join(f"mx:m{i}.example.net" for i in range(4)))

    sender_domain_verify(domain=domain)

    assert checks(domain)["spf"] == (
        FAILED,
        "The SPF record needs more than 10 DNS look-ups "
        "(include, a, mx, ptr, exists, redirect); receivers reject it as an error.",
    )


def test_an_spf_record_without_the_relay_host_is_reported(
    zone: Zone, domain: SenderDomain, dispatcher: Dispatcher
) -> None:
    publish_correct(zone, domain)
    zone.records[DOMAIN] = []
    zone.txt(DOMAIN, "v=spf1 include:_spf.example.net -ip4:127.0.0.1 ~all")
    zone.txt("_spf.example.net", "v=spf1 ip4:192.0.2.0/24 -all")

    sender_domain_verify(domain=domain)

    assert checks(domain)["spf"] == (
        FAILED,
        "The SPF record does not include the sending hosts: 127.0.0.1.",
    )


def test_an_spf_include_that_covers_the_relay_host_verifies(
    zone: Zone, domain: SenderDomain, dispatcher: Dispatcher
) -> None:
    publish_correct(zone, domain)
    zone.records[DOMAIN] = []
    zone.txt(DOMAIN, "v=spf1 include:_spf.example.net ~all")
    zone.txt("_spf.example.net", "v=spf1 a:relay.example.net -all")
    zone.a("relay.example.net", "127.0.0.1")

    sender_domain_verify(domain=domain)

    assert checks(domain)["spf"] == (OK, "")


def test_a_dkim_record_with_another_key_is_reported(zone: Zone, domain: SenderDomain) -> None:
    publish_correct(zone, domain)
    name = f"{domain.dkim_selector}._domainkey.{DOMAIN}"
    other = SenderDomain(dkim_public_key="MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwrong")
    zone.records[name] = []
    zone.txt(name, dkim_value(other))

    sender_domain_verify(domain=domain)

    assert checks(domain)["dkim"] == (
        FAILED,
        f"The DKIM key published at {name} does not match Herald's key for this selector.",
    )
    assert domain.key_active is False  # it will not sign with an unpublished key


def test_a_missing_dkim_record_is_reported(zone: Zone, domain: SenderDomain) -> None:
    publish_correct(zone, domain)
    del zone.records[f"{domain.dkim_selector}._domainkey.{DOMAIN}"]

    sender_domain_verify(domain=domain)

    assert checks(domain)["dkim"] == (
        FAILED,
        f"No DKIM record at {domain.dkim_selector}._domainkey.{DOMAIN}.",
    )


def test_a_missing_dmarc_record_is_reported(zone: Zone, domain: SenderDomain) -> None:
    publish_correct(zone, domain)
    del zone.records[f"_dmarc.{DOMAIN}"]

    sender_domain_verify(domain=domain)

    assert checks(domain)["dmarc"] == (FAILED, f"No DMARC record at _dmarc.{DOMAIN}.")


@pytest.mark.parametrize(
    "record, detail",
    [
        (
            "v=DMARC1; p=maybe",
            "p= must be none, quarantine or reject.",
        ),
        (
            "v=DMARC1 p=none",
            "it must be tag=value pairs separated by semicolons, starting with v=DMARC1.",
        ),
    ],
)
def test_a_malformed_dmarc_record_is_reported(
    zone: Zone, domain: SenderDomain, record: str, detail: str
) -> None:
    publish_correct(zone, domain)
    zone.records[f"_dmarc.{DOMAIN}"] = []
    zone.txt(f"_dmarc.{DOMAIN}", record)

    sender_domain_verify(domain=domain)

    assert checks(domain)["dmarc"] == (
        FAILED,
        f"The DMARC record at _dmarc.{DOMAIN} is malformed: {detail}",
    )


def test_a_failing_dns_server_is_a_failed_check_not_a_crash(
    zone: Zone, domain: SenderDomain
) -> None:
    publish_correct(zone, domain)
    zone.failing.add(DOMAIN)

    assert sender_domain_verify(domain=domain) is False

    status, reason = checks(domain)["spf"]
    assert status == FAILED
    assert reason.startswith(f"The DNS look-up of {DOMAIN} (TXT) failed: ")
    assert "SERVFAIL" in reason
    assert checks(domain)["dmarc"] == (OK, "")


def test_a_domain_that_stops_verifying_raises_a_notification_and_resolves_it(
    zone: Zone, domain: SenderDomain
) -> None:
    key = f"senderdomain:{domain.pk}"
    publish_correct(zone, domain)
    sender_domain_verify(domain=domain)
    assert not Notification.objects.filter(key=key).exists()

    del zone.records[f"_dmarc.{DOMAIN}"]
    sender_domain_verify(domain=domain)

    raised = Notification.objects.get(key=key, resolved_at__isnull=True)
    assert raised.title == f"Sender domain {DOMAIN} no longer verifies"
    assert raised.message == f"DMARC: No DMARC record at _dmarc.{DOMAIN}."

    publish_correct(zone, domain)
    sender_domain_verify(domain=domain)

    assert not Notification.objects.filter(key=key, resolved_at__isnull=True).exists()


def test_a_new_domain_not_yet_published_raises_no_notification(
    zone: Zone, domain: SenderDomain
) -> None:
    sender_domain_verify(domain=domain)

    assert not Notification.objects.exists()


def test_a_new_key_waits_for_its_record_then_replaces_the_old_one(
    zone: Zone, domain: SenderDomain
) -> None:
    publish_correct(zone, domain)
    sender_domain_verify(domain=domain)
    old_selector, old_key = domain.dkim_selector, domain.dkim_public_key

    sender_domain_key_new(domain=domain)
    new_selector = domain.pending_selector
    assert new_selector != old_selector
    sender_domain_verify(domain=domain)

    domain.refresh_from_db()
    assert domain.dkim_selector == old_selector  # still signing with the old key
    assert domain.pending_reason == f"No DKIM record at {new_selector}._domainkey.{DOMAIN}."

    zone.txt(f"{new_selector}._domainkey.{DOMAIN}", dkim_value(domain, new_selector))
    sender_domain_verify(domain=domain)

    domain.refresh_from_db()
    assert domain.dkim_selector == new_selector
    assert domain.dkim_public_key != old_key
    assert domain.pending_selector == "" and domain.pending_private_key is None
    assert domain.is_verified


def test_the_beat_job_verifies_every_domain_not_archived_and_records_its_run(
    zone: Zone, domain: SenderDomain
) -> None:
    archived = SenderDomain.objects.create(
        domain="old.example.org", dkim_selector="s1", dkim_private_key="k", archived=True
    )
    publish_correct(zone, domain)

    assert tasks.verify_sender_domains() == 1

    assert checks(domain)["dmarc"][0] == OK
    archived.refresh_from_db()
    assert archived.checked_at is None
    run = JobRun.objects.get(job=Job.VERIFY_SENDER_DOMAINS)
    assert (run.outcome, run.items_processed) == (JobRun.Outcome.OK, 1)


def test_beat_runs_the_job_hourly() -> None:
    task = PeriodicTask.objects.get(name="Verify sender domains")

    assert task.task == Job.VERIFY_SENDER_DOMAINS.value == tasks.verify_sender_domains.name
    assert (task.interval.every, task.interval.period, task.enabled) == (3600, "seconds", True)
