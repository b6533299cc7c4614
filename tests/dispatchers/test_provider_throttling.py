"""Per-provider throttling: recipients grouped by who hosts their mailbox,
a rate per provider per dispatcher held exactly at claim time, halved
when the provider says "rate limited" and given back minute by minute,
without slowing anyone else."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from campaigns import services
from campaigns.models import Campaign, CampaignItem, Contact, ContactList, Subscription
from dispatchers.mailbox_providers import mail_domains_resolve, mx_provider
from dispatchers.models import (
    Dispatcher,
    DispatcherPool,
    MailDomain,
    PoolMember,
    ProviderRate,
    ProviderThrottle,
    ProviderUsage,
)
from dispatchers.throttle import effective_rate, provider_throttle_record
from dispatchers.transports import Outcome, SendResult
from jobs.models import Notification
from tests.helpers import make_audience, make_campaign, make_dispatcher, make_smtp_server
from tests.smtp import SmtpSink

from .dns import Zone

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


def with_rates(dispatcher: Dispatcher, **per_minute: int) -> Dispatcher:
    for provider, rate in per_minute.items():
        ProviderRate.objects.create(dispatcher=dispatcher, provider=provider, per_minute=rate)
    return dispatcher


def campaign_to(dispatcher: Dispatcher, *lists: ContactList) -> Campaign:
    campaign = make_campaign(
        dispatcher=dispatcher, lists=list(lists), status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    return campaign


def groups(campaign: Campaign) -> dict[str, str]:
    return dict(campaign.items.values_list("contact__email", "provider_group"))


# --- grouping ----------------------------------------------------------------


def test_consumer_domains_group_without_a_look_up_and_others_by_their_mx(zone: Zone) -> None:
    zone.mx("acme-mail.net", "aspmx.l.google.com")
    zone.mx("contoso-corp.com", "contoso-corp-com.mail.protection.outlook.com")
    zone.mx("smallbiz.net", "mx-biz.mail.am0.yahoodns.net")
    zone.mx("fruitco.net", "mx01.mail.icloud.com")
    zone.mx("bakery.net", "mail.bakery.net")
    zone.failing.add("broken.net")
    dispatcher = with_rates(make_dispatcher(), google=100)
    audience = ContactList.objects.create(name="Mixed")
    emails = [
        "ann@gmail.com",
        "bob@hotmail.co.uk",
        "cy@yahoo.fr",
        "di@me.com",
        "ed@acme-mail.net",
        "fay@contoso-corp.com",
        "gus@smallbiz.net",
        "hal@fruitco.net",
        "ida@bakery.net",
        "jo@broken.net",
    ]
    for email in emails:
        Subscription.objects.create(
            contact=Contact.objects.create(email=email), contact_list=audience
        )

    campaign = campaign_to(dispatcher, audience)

    assert groups(campaign) == {
        "ann@gmail.com": "google",
        "bob@hotmail.co.uk": "microsoft",
        "cy@yahoo.fr": "yahoo",
        "di@me.com": "apple",
        "ed@acme-mail.net": "google",
        "fay@contoso-corp.com": "microsoft",
        "gus@smallbiz.net": "yahoo",
        "hal@fruitco.net": "apple",
        "ida@bakery.net": "bakery.net",  # its own group
        "jo@broken.net": "broken.net",  # a failed look-up holds nothing back
    }
    kept = {d.domain: d for d in MailDomain.objects.all()}
    assert set(kept) == {
        "acme-mail.net",
        "contoso-corp.com",
        "smallbiz.net",
        "fruitco.net",
        "bakery.net",
        "broken.net",
    }  # gmail.com and friends need no look-up
    assert kept["acme-mail.net"].mx_host == "aspmx.l.google.com"
    assert kept["broken.net"].provider == "" and "failed" in kept["broken.net"].error


def test_a_look_up_is_kept_and_done_again_once_old(zone: Zone, settings: object) -> None:
    zone.mx("bakery.net", "mail.bakery.net")
    now = timezone.now()
    assert mail_domains_resolve(domains=["bakery.net"], now=now) == {"bakery.net": ""}

    zone.clear()
    zone.mx("bakery.net", "alt1.aspmx.l.google.com")  # moved to Google Workspace
    assert mail_domains_resolve(domains=["bakery.net"], now=now + timedelta(hours=1)) == {}
    later = now + timedelta(hours=settings.HERALD_PROVIDER_MX_TTL_HOURS + 1)  # type: ignore[attr-defined]
    assert mail_domains_resolve(domains=["bakery.net"], now=later) == {"bakery.net": "google"}
    assert MailDomain.objects.get(domain="bakery.net").provider == "google"


def test_mx_hosts_map_to_their_providers() -> None:
    assert mx_provider("gmail-smtp-in.l.google.com.") == "google"
    assert mx_provider("smtp.google.com") == "google"
    assert mx_provider("example-com.olc.protection.outlook.com") == "microsoft"
    assert mx_provider("mta7.am0.yahoodns.net") == "yahoo"
    assert mx_provider("mx02.mail.icloud.com") == "apple"
    assert mx_provider("mail.notgoogle.com") == ""
    assert mx_provider("google.com.evil.net") == ""


def test_items_of_a_dispatcher_without_rates_are_not_looked_up(zone: Zone) -> None:
    zone.mx("acme-mail.net", "aspmx.l.google.com")
    campaign = campaign_to(make_dispatcher(), make_audience(2, domain="acme-mail.net"))
    assert set(groups(campaign).values()) == {"acme-mail.net"}
    assert not MailDomain.objects.exists()


# --- what counts as "slow down" ---------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "throttled"),
    [
        (
            451,
            "4.7.28 [192.0.2.1] Our system has detected an unusual rate of mail, rate limited",
            True,
        ),
        (421, "4.7.0 Try again later, closing connection.", True),
        (451, "4.7.500 Server busy. Please try again later from [192.0.2.1]", True),
        (
            421,
            "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to user complaints",
            True,
        ),
        (450, "4.2.1 The user you are trying to contact is receiving mail too quickly", False),
        (452, "4.5.3 Too many recipients", True),
        (451, "4.7.1 Greylisted, try again later", False),
        (451, "4.3.0 Mail server temporarily rejected message", False),
        (550, "5.7.1 Rate limited", False),
    ],
)
def test_rate_limit_replies_are_told_apart(code: int, text: str, throttled: bool) -> None:
    outcome = Outcome.TRANSIENT if code < 500 else Outcome.PERMANENT
    assert SendResult(outcome, code, text).throttled is throttled


# --- the ledger --------------------------------------------------------------


def test_a_provider_gets_no_more_than_its_rate_a_minute_while_others_flow() -> None:
    dispatcher = with_rates(make_dispatcher(batch_size=100), google=10, other=1000)
    campaign = campaign_to(
        dispatcher,
        make_audience(30, domain="gmail.com"),
        make_audience(30, name="Shop", domain="example.org"),
    )
    now = timezone.now().replace(second=10)  # the next claim falls in the same minute

    first = services.batch_claim(dispatcher_id=dispatcher.pk, now=now)
    assert Counter(first.campaignitem_set.values_list("provider_group", flat=True)) == {
        "google": 10,
        "example.org": 30,
    }
    assert (
        services.batch_claim(dispatcher_id=dispatcher.pk, now=now + timedelta(seconds=30)) is None
    )
    assert campaign.items.filter(status=S.PENDING, provider_group="google").count() == 20

    second = services.batch_claim(dispatcher_id=dispatcher.pk, now=now + timedelta(minutes=1))
    assert second.size == 10
    ledger = ProviderUsage.objects.filter(dispatcher=dispatcher, group="google")
    assert sorted(ledger.values_list("count", flat=True)) == [10, 10]


def test_a_minute_left_with_only_held_back_items_is_not_walked_again() -> None:
    dispatcher = with_rates(make_dispatcher(batch_size=100), google=10)
    campaign_to(dispatcher, make_audience(30, domain="gmail.com"))
    now = timezone.now()
    assert services.batch_claim(dispatcher_id=dispatcher.pk, now=now).size == 10
    assert services.batch_claim(dispatcher_id=dispatcher.pk, now=now) is None

    with CaptureQueriesContext(connection) as queries:
        assert services.batch_claim(dispatcher_id=dispatcher.pk, now=now) is None
    item_table = CampaignItem._meta.db_table
    assert not [q for q in queries if f'FROM "{item_table}"' in q["sql"]]
    assert services.batch_claim(dispatcher_id=dispatcher.pk, now=now + timedelta(minutes=1))


def test_each_other_domain_has_its_own_rate() -> None:
    dispatcher = with_rates(make_dispatcher(batch_size=100), other=5)
    campaign_to(
        dispatcher,
        make_audience(8, domain="bakery.example"),
        make_audience(8, name="Florist", domain="florist.example"),
    )
    batch = services.batch_claim(dispatcher_id=dispatcher.pk, now=timezone.now())
    assert Counter(batch.campaignitem_set.values_list("provider_group", flat=True)) == {
        "bakery.example": 5,
        "florist.example": 5,
    }


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_claimers_share_one_budget() -> None:
    dispatcher = with_rates(make_dispatcher(batch_size=3), google=20)
    campaign_to(dispatcher, make_audience(100, domain="gmail.com"))
    now = timezone.now()
    claimed: list[int] = []

    def claimer() -> None:
        try:
            while (batch := services.batch_claim(dispatcher_id=dispatcher.pk, now=now)) is not None:
                claimed.append(batch.size)
                services.Batch.objects.filter(pk=batch.pk).update(finished_at=now)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(claimed) == 20
    assert CampaignItem.objects.filter(status=S.CLAIMED).count() == 20


# --- slowing down and recovering ----------------------------------------------


def test_a_refusal_halves_the_rate_once_a_minute_and_minutes_without_give_it_back() -> None:
    dispatcher = with_rates(make_dispatcher(), google=40)
    t0 = timezone.now()
    reply = "451 4.7.28 rate limited, try again later"

    assert (
        provider_throttle_record(dispatcher=dispatcher, group="google", reply=reply, claimed_at=t0)
        == 20
    )
    # Messages claimed before the cut took effect: no second halving.
    assert (
        provider_throttle_record(
            dispatcher=dispatcher,
            group="google",
            reply=reply,
            claimed_at=t0 + timedelta(seconds=20),
        )
        is None
    )
    throttle = ProviderThrottle.objects.get(dispatcher=dispatcher, group="google")
    refused = throttle.refused_at
    assert [effective_rate(40, throttle, refused + timedelta(minutes=m)) for m in range(7)] == [
        20,
        24,
        28,
        32,
        36,
        40,
        40,
    ]
    later = t0 + timedelta(minutes=1, seconds=30)
    assert (
        provider_throttle_record(
            dispatcher=dispatcher, group="google", reply=reply, claimed_at=later
        )
        == 12
    )
    for minute in range(2, 8):
        provider_throttle_record(
            dispatcher=dispatcher,
            group="google",
            reply=reply,
            claimed_at=t0 + timedelta(minutes=minute),
        )
    throttle.refresh_from_db()
    assert throttle.slowed_to == 4  # the floor: a tenth of the configured rate
    assert throttle.reply == reply
    assert ProviderThrottle.objects.filter(group="microsoft").count() == 0  # others untouched
    note = Notification.objects.get(key=f"dispatcher:{dispatcher.pk}:throttled:google")
    assert "4.7.28" in note.message


def test_a_recovered_provider_is_whole_again_and_its_notice_resolved() -> None:
    dispatcher = with_rates(make_dispatcher(batch_size=100), google=10)
    campaign_to(dispatcher, make_audience(50, domain="gmail.com"))
    t0 = timezone.now()
    provider_throttle_record(
        dispatcher=dispatcher, group="google", reply="421 4.7.0 Try again later", claimed_at=t0
    )
    assert services.batch_claim(dispatcher_id=dispatcher.pk, now=t0).size == 5

    batch = services.batch_claim(dispatcher_id=dispatcher.pk, now=t0 + timedelta(minutes=10))
    assert batch.size == 10
    assert ProviderThrottle.objects.get(group="google").slowed_to is None
    note = Notification.objects.get(key=f"dispatcher:{dispatcher.pk}:throttled:google")
    assert note.resolved_at is not None


# --- end to end: a real SMTP server that says "rate limited" ------------------


class PaceKeeper:
    """The receiving side of a provider that takes at most ``limit``
    messages a minute for its domain (the test says which minute it is)
    and answers 451 4.7.28 to the rest."""

    REPLY = (
        "451 4.7.28 [127.0.0.1] Our system has detected an unusual rate of mail: "
        "rate limited, try again later"
    )

    def __init__(self, domain: str, limit: int) -> None:
        self.domain = domain
        self.limit = limit
        self.minute = 0
        self.accepted: Counter[int] = Counter()
        self.refused: Counter[int] = Counter()

    def __call__(self, address: str) -> str | None:
        if not address.endswith("@" + self.domain):
            return None
        if self.accepted[self.minute] >= self.limit:
            self.refused[self.minute] += 1
            return self.REPLY
        self.accepted[self.minute] += 1
        return None


def run_minute(dispatcher: Dispatcher, now: datetime) -> None:
    while (batch := services.batch_claim(dispatcher_id=dispatcher.pk, now=now)) is not None:
        services.batch_send(batch_id=batch.pk)


def test_a_provider_that_says_rate_limited_is_slowed_until_it_stops_while_others_flow(
    zone: Zone,
) -> None:
    zone.mx("acme-mail.net", "aspmx.l.google.com")  # a Google Workspace domain
    zone.mx("bakery.net", "mail.bakery.net")
    pace = PaceKeeper("acme-mail.net", limit=10)
    with SmtpSink(rcpt_rule=pace) as sink:
        dispatcher = with_rates(
            make_dispatcher(smtp_server=make_smtp_server(port=sink.port), batch_size=100),
            google=40,
            other=60,
        )
        campaign = campaign_to(
            dispatcher,
            make_audience(60, domain="acme-mail.net"),
            make_audience(30, name="Bakery", domain="bakery.net"),
        )
        assert Counter(groups(campaign).values()) == {"google": 60, "bakery.net": 30}
        start = timezone.now()
        delivered_by_minute: list[Counter[str]] = []
        for minute in range(12):
            pace.minute = minute
            before = Counter(sink.per_recipient())
            run_minute(dispatcher, start + timedelta(minutes=minute, seconds=30))
            delivered_by_minute.append(
                Counter(r.rpartition("@")[2] for r in sink.per_recipient() - before)
            )

        # Every recipient exactly once; the bakery's all in the first minute.
        assert len(sink.per_recipient()) == 90
        assert set(sink.per_recipient().values()) == {1}
        assert delivered_by_minute[0]["bakery.net"] == 30
        assert campaign.items.filter(status=S.SENT).count() == 90
        # Google's rate was halved after the refusals, and the refusals stopped.
        claimed = dict(
            ProviderUsage.objects.filter(dispatcher=dispatcher, group="google")
            .order_by("minute")
            .values_list("minute", "count")
        )
        counts = list(claimed.values())
        assert counts[0] == 40 and counts[1] < 40
        assert sum(pace.refused.values()) > 0
        last_refusal = max(m for m, n in pace.refused.items() if n)
        assert all(pace.refused[m] == 0 for m in range(last_refusal + 1, 12))
        assert all(n <= 10 for n in pace.accepted.values())
        throttle = ProviderThrottle.objects.get(dispatcher=dispatcher, group="google")
        assert throttle.refusals > 0 and "4.7.28" in throttle.reply
        assert not ProviderThrottle.objects.filter(group="bakery.net").exists()
        # Refusals neither paused the campaign or the dispatcher nor used up attempts.
        campaign.refresh_from_db()
        dispatcher.refresh_from_db()
        assert campaign.status == Campaign.Status.SENDING and campaign.consecutive_errors == 0
        assert dispatcher.is_enabled and dispatcher.consecutive_failures == 0
        assert set(campaign.items.values_list("attempts", flat=True)) == {1}


# --- the dispatcher page ------------------------------------------------------


def test_the_dispatcher_page_shows_each_providers_rate_now(administrator_client: Client) -> None:
    dispatcher = with_rates(make_dispatcher(batch_size=100), google=40, microsoft=150)
    campaign_to(dispatcher, make_audience(30, domain="gmail.com"))
    now = timezone.now()
    provider_throttle_record(
        dispatcher=dispatcher,
        group="google",
        reply="451 4.7.28 rate limited, try again later",
        claimed_at=now - timedelta(seconds=5),
    )
    services.batch_claim(dispatcher_id=dispatcher.pk, now=now)

    page = administrator_client.get(
        reverse("admin:dispatchers_dispatcher_change", args=[dispatcher.pk])
    ).content.decode()

    assert "Per-provider rates" in page
    row = page.split("Google (Gmail, Workspace)</td>")[1].split("</tr>")[0]
    cells = [c.split("</td>")[0] for c in row.split("<td>")[1:]]
    assert cells[0] == "40"  # configured
    assert "20" in cells[1] and "slowed down" in cells[1]  # now
    assert cells[2] == "20"  # sent this minute
    assert "451 4.7.28 rate limited, try again later" in cells[4]


def test_a_dispatcher_added_in_the_admin_gets_the_default_rates(
    administrator_client: Client, smtp_server: object
) -> None:
    from .test_dispatcher_admin import ADD_URL, add_form

    administrator_client.post(ADD_URL, add_form(smtp_server=str(smtp_server.pk)))  # type: ignore[attr-defined]
    added = Dispatcher.objects.get(name="Announcements")
    assert dict(added.provider_rates.values_list("provider", "per_minute")) == {
        "google": 250,
        "microsoft": 150,
        "yahoo": 150,
        "apple": 100,
        "other": 60,
    }


def test_the_pool_page_names_the_providers_slowing_a_member_down(
    administrator_client: Client,
) -> None:
    member = with_rates(make_dispatcher(name="Mailer A"), google=40)
    pool = DispatcherPool.objects.create(name="Main pool")
    PoolMember.objects.create(pool=pool, dispatcher=member, priority=1)
    provider_throttle_record(
        dispatcher=member,
        group="google",
        reply="421 4.7.0 Try again later, closing connection.",
        claimed_at=timezone.now(),
    )

    page = administrator_client.get(
        reverse("admin:dispatchers_dispatcherpool_change", args=[pool.pk])
    ).content.decode()

    assert (
        "Google (Gmail, Workspace): 20 of 40 a minute "
        "(421 4.7.0 Try again later, closing connection.)" in page
    )
