"""The campaign report: live counts, sends per minute, the per-recipient
table (search, filter, keyset pages) and its CSV export."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from typing import Any

import pytest
from django.core import signing
from django.core.cache import cache
from django.db import connection
from django.http import StreamingHttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.roles import ADMINISTRATOR, MARKETER, OPERATOR
from campaigns.messages import UNSUBSCRIBE_SALT as SALT
from campaigns.models import Campaign, CampaignItem
from tests.campaigns.cast import bulk_items, login_as
from tests.helpers import make_campaign, make_dispatcher

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


@pytest.fixture(autouse=True)
def fresh_cache(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()  # counts are cached a few seconds; each test starts clean


@pytest.fixture
def campaign() -> Campaign:
    return make_campaign(dispatcher=make_dispatcher(), lists=[], status=Campaign.Status.SENDING)


def report(client: Client, campaign: Campaign, **query: Any) -> Any:
    return client.get(reverse("campaigns:campaign_report", args=[campaign.pk]), query)


def stat(html: str, name: str) -> str:
    match = re.search(rf'data-report="{name}">([^<]*)<', html)
    assert match, name
    return match.group(1)


def emails(html: str) -> list[str]:
    return re.findall(r"<tr><td>([^<]+@example\.org)</td>", html)


def test_the_report_shows_each_status_count_and_the_progress(
    client: Client, campaign: Campaign
) -> None:
    bulk_items(campaign, 5, status=S.PENDING, prefix="p")
    bulk_items(campaign, 2, status=S.CLAIMED, prefix="c")
    bulk_items(campaign, 8, status=S.SENT, prefix="s", sent_at=timezone.now())
    bulk_items(campaign, 3, status=S.DEFERRED, prefix="d")
    bulk_items(campaign, 4, status=S.FAILED, prefix="f")
    bulk_items(campaign, 1, status=S.BOUNCED, prefix="b")
    bulk_items(campaign, 2, status=S.SKIPPED, prefix="k")
    login_as(client, MARKETER)

    html = report(client, campaign).content.decode()

    counts = {n: stat(html, n) for n in ("pending", "sent", "deferred", "failed", "bounced")}
    assert counts == {"pending": "7", "sent": "8", "deferred": "3", "failed": "4", "bounced": "1"}
    assert stat(html, "skipped") == "2"
    assert stat(html, "progress") == "15 / 25 (60%)"
    assert 'data-live-url="/campaigns/' in html  # a live campaign keeps refreshing


def test_the_live_region_shows_new_counts_without_reloading_the_page(
    client: Client, campaign: Campaign
) -> None:
    ids = bulk_items(campaign, 10, status=S.PENDING)
    login_as(client, OPERATOR)
    live = reverse("campaigns:campaign_live", args=[campaign.pk])
    assert stat(client.get(live).content.decode(), "sent") == "0"

    CampaignItem.objects.filter(contact_id__in=ids[:6]).update(
        status=S.SENT, sent_at=timezone.now()
    )

    html = client.get(live).content.decode()
    assert (stat(html, "sent"), stat(html, "pending")) == ("6", "4")
    assert "<html" not in html  # a fragment, swapped into the page


def test_the_live_counts_never_read_the_items(client: Client, campaign: Campaign) -> None:
    bulk_items(campaign, 10)
    login_as(client, MARKETER)
    live = reverse("campaigns:campaign_live", args=[campaign.pk])

    with CaptureQueriesContext(connection) as queries:
        client.get(live)

    item_table = CampaignItem._meta.db_table
    assert not [q for q in queries if f'FROM "{item_table}"' in q["sql"]]


def test_a_completed_campaign_reads_its_frozen_counters(client: Client) -> None:
    done = make_campaign(dispatcher=make_dispatcher(), lists=[], status=Campaign.Status.COMPLETED)
    Campaign.objects.filter(pk=done.pk).update(
        total_count=1000, sent_count=990, failed_count=6, skipped_count=4
    )
    login_as(client, MARKETER)

    html = report(client, done).content.decode()

    assert (stat(html, "sent"), stat(html, "failed"), stat(html, "skipped")) == ("990", "6", "4")
    assert stat(html, "progress") == "1000 / 1000 (100%)"
    assert "data-live-url" not in html  # nothing moves any more


def test_the_chart_draws_sends_per_minute_as_inline_svg(client: Client, campaign: Campaign) -> None:
    now = timezone.now().replace(second=30)
    bulk_items(campaign, 7, status=S.SENT, prefix="a", sent_at=now - timedelta(minutes=2))
    bulk_items(campaign, 3, status=S.SENT, prefix="b", sent_at=now)
    bulk_items(campaign, 5, status=S.SENT, prefix="c", sent_at=now - timedelta(hours=5))
    login_as(client, MARKETER)

    html = report(client, campaign).content.decode()

    bars = re.findall(r"<rect [^>]*><title>(\d\d:\d\d): (\d+) sent</title>", html)
    local = timezone.localtime
    assert bars == [
        (f"{local(now - timedelta(minutes=2)):%H:%M}", "7"),
        (f"{local(now):%H:%M}", "3"),
    ]  # the sends of five hours ago are outside the window


def test_the_recipient_table_pages_through_1200_recipients_by_cursor(
    client: Client, campaign: Campaign
) -> None:
    bulk_items(campaign, 1200, status=S.SENT, sent_at=timezone.now())
    login_as(client, MARKETER)

    seen: list[str] = []
    pages: list[list[str]] = []
    query: dict[str, Any] = {}
    while True:
        html = report(client, campaign, **query).content.decode()
        pages.append(emails(html))
        seen += pages[-1]
        following = re.search(r'rel="next" href="\?after=(\d+)', html)
        if not following:
            break
        query = {"after": following.group(1)}
        with CaptureQueriesContext(connection) as queries:
            report(client, campaign, **query)
        assert not [q for q in queries if "OFFSET" in q["sql"]]

    assert len(pages) == 24 and all(len(p) == 50 for p in pages)
    assert seen == [f"r{i:06d}@example.org" for i in range(1, 1201)]  # each once, in order
    # Back one page from the last shows the page before it again.
    before = re.search(r'rel="prev" href="\?before=(\d+)', html)
    assert before
    assert emails(report(client, campaign, before=before.group(1)).content.decode()) == pages[-2]


def test_search_by_email_and_filter_by_status(client: Client, campaign: Campaign) -> None:
    bulk_items(campaign, 60, status=S.SENT, prefix="sent", sent_at=timezone.now())
    bulk_items(campaign, 3, status=S.FAILED, prefix="fail", smtp_code=550, smtp_response="5.1.1")
    login_as(client, MARKETER)

    failed = report(client, campaign, status=S.FAILED).content.decode()
    assert emails(failed) == [f"fail{i:06d}@example.org" for i in (1, 2, 3)]
    assert "550 5.1.1" in failed  # the last error
    assert 'rel="next"' not in failed

    found = report(client, campaign, email="SENT00001").content.decode()  # any case, a prefix
    assert emails(found) == [f"sent{i:06d}@example.org" for i in range(10, 20)]


def test_bad_filters_are_refused_clearly(client: Client, campaign: Campaign) -> None:
    bulk_items(campaign, 3)
    login_as(client, MARKETER)

    response = report(client, campaign, status="exploded", after="abc")

    assert response.status_code == 400
    html = response.content.decode()
    assert "Select a valid choice" in html and "Enter a whole number" in html
    assert emails(html) == []


def test_the_export_streams_every_recipient_with_formulas_defused(
    client: Client, campaign: Campaign
) -> None:
    bulk_items(campaign, 2500, status=S.SENT, sent_at=timezone.now())
    bulk_items(
        campaign, 1, status=S.FAILED, prefix="x", smtp_code=550, smtp_response="=HYPERLINK(1)"
    )
    login_as(client, OPERATOR)

    response = client.get(reverse("campaigns:campaign_export", args=[campaign.pk]))

    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Disposition"].startswith("attachment;")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == [
        "email",
        "status",
        "attempts",
        "last_error",
        "sent_at",
        *["possibly_duplicated"],
    ]
    assert len(rows) == 2502 and len({r[0] for r in rows[1:]}) == 2501
    assert rows[-1][:4] == ["x000001@example.org", "failed", "1", "550 =HYPERLINK(1)"]
    assert rows[1][1] == "sent"
    failed_only = client.get(
        reverse("campaigns:campaign_export", args=[campaign.pk]), {"status": "failed"}
    )
    assert len(b"".join(failed_only.streaming_content).decode().splitlines()) == 2


def test_a_cell_starting_with_a_formula_is_quoted(client: Client, campaign: Campaign) -> None:
    bulk_items(campaign, 1, status=S.FAILED, prefix="=cmd", smtp_response="@SUM(A1)")
    login_as(client, MARKETER)

    body = b"".join(
        client.get(reverse("campaigns:campaign_export", args=[campaign.pk])).streaming_content
    ).decode()

    row = list(csv.reader(io.StringIO(body)))[1]
    assert row[0] == "'=cmd000001@example.org" and row[3] == "'@SUM(A1)"


@pytest.mark.parametrize("role", [MARKETER, OPERATOR, ADMINISTRATOR])
def test_every_role_reads_the_report(client: Client, campaign: Campaign, role: str) -> None:
    bulk_items(campaign, 2)
    login_as(client, role)
    assert report(client, campaign).status_code == 200


def test_someone_without_a_role_cannot_read_the_report_or_export(
    client: Client, campaign: Campaign, django_user_model: Any
) -> None:
    bulk_items(campaign, 2)
    client.force_login(django_user_model.objects.create_user("nobody", is_staff=True))

    assert report(client, campaign).status_code == 403
    export = client.get(reverse("campaigns:campaign_export", args=[campaign.pk]))
    assert export.status_code == 403


def test_the_report_tells_the_fate_of_each_recipient_of_a_real_send(client: Client) -> None:
    from campaigns import services
    from campaigns.models import Contact, Suppression
    from tests.helpers import make_audience, make_smtp_server
    from tests.smtp import SmtpSink

    refuse = {"user1@example.org": "550 5.1.1 No such user", "user2@example.org": "451 4.3.0 Busy"}
    with SmtpSink(rcpt_rule=lambda a: refuse.get(a)) as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        campaign = make_campaign(
            dispatcher=dispatcher, lists=[make_audience(6)], status=Campaign.Status.SCHEDULED
        )
        Suppression.objects.create(pattern="user3@example.org")
        Contact.objects.filter(email="user4@example.org").update(status="unsubscribed")
        services.items_generate()
        while (batch := services.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
            services.batch_send(batch_id=batch.pk)
    login_as(client, MARKETER)

    html = report(client, campaign).content.decode()

    counts = {n: stat(html, n) for n in ("sent", "failed", "deferred", "skipped", "pending")}
    assert counts == {"sent": "2", "failed": "1", "deferred": "1", "skipped": "2", "pending": "0"}
    rows = dict(re.findall(r"<tr><td>([^<]+@example\.org)</td><td>([^<]+)</td>", html))
    assert rows == {
        "user0@example.org": "Sent",
        "user1@example.org": "Failed",
        "user2@example.org": "Deferred",
        "user3@example.org": "Skipped",
        "user4@example.org": "Skipped",
        "user5@example.org": "Sent",
    }
    assert "550 5.1.1 No such user" in html
    charted = re.findall(r"<title>\d\d:\d\d: (\d+) sent</title>", html)
    assert sum(map(int, charted)) == 2  # on the chart, one or two minutes


def test_a_live_campaign_on_the_dashboard_opens_its_report(
    client: Client, campaign: Campaign
) -> None:
    login_as(client, OPERATOR)
    html = client.get(reverse("admin:index")).content.decode()
    assert f'href="/campaigns/{campaign.pk}/"><strong>{campaign.name}</strong>' in html


def test_the_report_shows_opens_clicks_and_unsubscribes(client: Client, campaign: Campaign) -> None:
    bulk_items(campaign, 20, status=S.SENT)
    token = campaign.items.first().token
    Campaign.objects.filter(pk=campaign.pk).update(
        track_opens=True, track_clicks=True, unique_opens=5, unique_clicks=2
    )
    unsubscribe = reverse("campaigns:unsubscribe", args=[signing.dumps(token, salt=SALT)])
    for _ in range(2):  # one-click, twice: one unsubscribe
        client.post(unsubscribe, {"List-Unsubscribe": "One-Click"})
    login_as(client, MARKETER)

    html = report(client, Campaign.objects.get(pk=campaign.pk)).content.decode()

    assert (stat(html, "opens"), stat(html, "clicks"), stat(html, "unsubscribes")) == (
        "5",
        "2",
        "1",
    )
    assert "25.0% of sent" in html and "10.0% of sent" in html


def test_without_tracking_the_report_says_so(client: Client, campaign: Campaign) -> None:
    login_as(client, MARKETER)
    html = report(client, campaign).content.decode()
    assert stat(html, "opens") == "–" and "tracking off" in html
