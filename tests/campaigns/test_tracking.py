"""Open and click tracking: what a marketer reads in the report, and what
a forger cannot do with the public URLs."""

from __future__ import annotations

import re

import pytest
from django.template import Context
from django.test import Client

from campaigns.models import Campaign, CampaignItem, TrackedLink, TrackingEvent
from campaigns.sandbox import HTML_ENGINE
from campaigns.tracking import tracking_source, tracking_url
from tests.helpers import make_audience, make_campaign, make_dispatcher

pytestmark = pytest.mark.django_db

SOURCE = """<html><body>
<p>Hello {{ contact.first_name }}</p>
<a href="https://shop.example.com/sale?a=1&amp;b=2">Sale</a>
<a class="x" href='https://shop.example.com/about'>About</a>
<a href="https://shop.example.com/u/{{ contact.email }}">Yours</a>
<a href="{{ unsubscribe_url }}">Unsubscribe</a>
<a href="mailto:help@example.com">Help</a>
</BODY></html>"""
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/130.0 Safari/537.36"


@pytest.fixture
def campaign() -> Campaign:
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/herald-test-outbox")
    campaign = make_campaign(dispatcher=dispatcher, lists=[make_audience(2)])
    Campaign.objects.filter(pk=campaign.pk).update(track_opens=True, track_clicks=True)
    campaign.refresh_from_db()
    for contact in campaign.lists.get().contacts.all():
        CampaignItem.objects.create(campaign=campaign, contact=contact, status="sent")
    return campaign


def rendered(campaign: Campaign, item: CampaignItem) -> str:
    source = tracking_source(campaign=campaign, html_source=SOURCE)
    values = {
        "tracking_url": tracking_url(item.token),
        "unsubscribe_url": "https://herald.example/u/x/",
        "contact": {"first_name": "Ann", "email": "ann@example.org"},
    }
    return HTML_ENGINE.from_string(source).render(Context(values))


def click_urls(html: str) -> list[str]:
    return re.findall(r'href=["\'](http://[^"\']+/t/[^"\']+/c/\d+/)["\']', html)


def path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def test_static_links_go_through_herald_and_the_others_stay_direct(campaign: Campaign) -> None:
    html = rendered(campaign, campaign.items.first())
    assert len(click_urls(html)) == 2
    assert sorted(TrackedLink.objects.values_list("url", flat=True)) == [
        "https://shop.example.com/about",
        "https://shop.example.com/sale?a=1&b=2",
    ]
    assert 'href="https://shop.example.com/u/ann@example.org"' in html
    assert 'href="https://herald.example/u/x/"' in html
    assert 'href="mailto:help@example.com"' in html
    assert html.index("o.gif") < html.index("</BODY>")


def test_nothing_is_rewritten_when_tracking_is_off(campaign: Campaign) -> None:
    Campaign.objects.filter(pk=campaign.pk).update(track_opens=False, track_clicks=False)
    campaign.refresh_from_db()
    assert tracking_source(campaign=campaign, html_source=SOURCE) == SOURCE
    assert not TrackedLink.objects.exists()


def test_a_click_redirects_to_the_link_and_counts_the_recipient_once(
    campaign: Campaign, client: Client
) -> None:
    item = campaign.items.first()
    sale = next(u for u in click_urls(rendered(campaign, item)))
    for _ in range(3):
        response = client.get(path(sale), HTTP_USER_AGENT=BROWSER)
        assert response.status_code == 302
        assert response["Location"] == "https://shop.example.com/sale?a=1&b=2"
    campaign.refresh_from_db()
    assert (campaign.unique_clicks, campaign.unique_opens) == (1, 1)  # a click is an open
    assert TrackingEvent.objects.filter(item=item, kind="click").count() == 3


def test_an_open_counts_once_and_the_pixel_is_an_image(campaign: Campaign, client: Client) -> None:
    item = campaign.items.first()
    pixel = path(tracking_url(item.token) + "o.gif")
    for _ in range(2):
        response = client.get(pixel, HTTP_USER_AGENT=BROWSER)
        assert response["Content-Type"] == "image/gif"
        assert "no-cache" in response["Cache-Control"]
    campaign.refresh_from_db()
    assert campaign.unique_opens == 1
    assert CampaignItem.objects.get(pk=item.pk).opened_at is not None


@pytest.mark.parametrize(
    "agent, address, method",
    [
        ("Mozilla/5.0", "17.58.100.3", "GET"),  # Apple Mail privacy proxy
        ("Mimecast URL Protect", "203.0.113.9", "GET"),  # a security gateway
        (BROWSER, "203.0.113.9", "HEAD"),  # a link checker
    ],
)
def test_machine_fetches_are_recorded_but_not_counted(
    campaign: Campaign, client: Client, agent: str, address: str, method: str
) -> None:
    item = campaign.items.first()
    sale = click_urls(rendered(campaign, item))[0]
    fetch = client.head if method == "HEAD" else client.get
    fetch(path(sale), HTTP_USER_AGENT=agent, REMOTE_ADDR=address)
    fetch(path(tracking_url(item.token) + "o.gif"), HTTP_USER_AGENT=agent, REMOTE_ADDR=address)
    campaign.refresh_from_db()
    assert (campaign.unique_opens, campaign.unique_clicks) == (0, 0)
    assert set(TrackingEvent.objects.values_list("machine", flat=True)) == {True}


def test_forged_keys_and_foreign_links_record_nothing_and_redirect_nowhere(
    campaign: Campaign, client: Client
) -> None:
    item = campaign.items.first()
    sale = path(click_urls(rendered(campaign, item))[0])
    token, signature = sale.split("/")[2].split(".")
    other = campaign.items.exclude(pk=item.pk).get()
    forged = sale.replace(token, other.token)  # another recipient's token, wrong signature
    assert client.get(forged, HTTP_USER_AGENT=BROWSER).status_code == 404
    altered = sale.replace(signature, "0" * len(signature))
    assert client.get(altered, HTTP_USER_AGENT=BROWSER).status_code == 404
    elsewhere = make_campaign(
        dispatcher=campaign.dispatcher, lists=[make_audience(1, name="B", domain="b.example")]
    )
    foreign = TrackedLink.objects.create(campaign=elsewhere, url="https://evil.example/")
    own_key = sale.split("/")[2]
    response = client.get(f"/t/{own_key}/c/{foreign.pk}/", HTTP_USER_AGENT=BROWSER)
    assert response.status_code == 404
    assert client.get(f"/t/{other.token}.bad/o.gif").status_code == 200  # still an image
    assert not TrackingEvent.objects.exists()
    campaign.refresh_from_db()
    assert (campaign.unique_opens, campaign.unique_clicks) == (0, 0)
