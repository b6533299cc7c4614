"""What every campaign message carries besides the template: the footers
of the Marketing configuration, the manage-subscriptions link, tracking
when it is switched on; and who is left out at the last moment."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from django.test import Client

from campaigns import services
from campaigns.models import (
    Campaign,
    CampaignItem,
    MarketingConfiguration,
    Subscription,
    TrackedLink,
)
from campaigns.preferences import preferences_contact
from tests.helpers import make_audience, make_campaign, make_dispatcher, make_template

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


def send(tmp_path: Path, count: int = 2, **campaign_fields: object) -> tuple[Campaign, Path]:
    outbox = tmp_path / "outbox"
    name = tmp_path.name  # one audience per call
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory=str(outbox))
    template = make_template(
        html_body="<html><body><p>Hi {{ contact.first_name }}</p>"
        '<a href="https://shop.example.com/sale">Sale</a></body></html>'
    )
    campaign = make_campaign(
        dispatcher=dispatcher,
        lists=[make_audience(count, name=name, domain=f"{name}.example")],
        template=template,
        status=Campaign.Status.SCHEDULED,
    )
    Campaign.objects.filter(pk=campaign.pk).update(**campaign_fields)
    services.items_generate()
    while (batch := services.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
        services.batch_send(batch_id=batch.pk)
    return campaign, outbox


def messages(outbox: Path) -> list[EmailMessage]:
    return [
        message_from_bytes(path.read_bytes(), policy=policy.default)  # type: ignore[misc]
        for path in sorted(outbox.glob("*.eml"))
    ]


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    return text.replace("\r\n", "\n"), html.replace("\r\n", "\n")


def test_every_message_carries_the_footers_with_working_links(
    tmp_path: Path, client: Client
) -> None:
    configuration = MarketingConfiguration.load()
    configuration.text_footer = (
        "--\nBye {{ contact.first_name }}. Leave: {{ unsubscribe_url }}\n"
        "Choose: {{ manage_subscriptions_url }}\n"
    )
    configuration.save()
    _, outbox = send(tmp_path)

    sent = messages(outbox)
    assert len(sent) == 2
    text, html = parts(sent[0])
    assert text.index("our news.") < text.index("--\nBye First")
    manage = re.search(r"Choose: (\S+)", text).group(1)
    assert "Manage subscriptions" in html and html.index("Hi First") < html.index("Unsubscribe")
    # The link opens that contact's own page, without logging in.
    signed = manage.rstrip("/").rpartition("/")[2]
    contact = preferences_contact(signed=signed)
    assert contact is not None and contact.email == sent[0]["To"].addresses[0].addr_spec
    path = "/" + manage.split("://", 1)[1].partition("/")[2]
    assert client.get(path).status_code == 200


def test_tracking_rewrites_links_and_adds_the_pixel_only_when_switched_on(tmp_path: Path) -> None:
    _, outbox = send(tmp_path / "off")
    _, html = parts(messages(outbox)[0])
    assert 'href="https://shop.example.com/sale"' in html and "o.gif" not in html

    campaign, outbox = send(tmp_path / "on", track_opens=True, track_clicks=True)
    _, html = parts(messages(outbox)[0])
    link = TrackedLink.objects.get(campaign=campaign)
    assert link.url == "https://shop.example.com/sale"
    assert re.search(rf'href="http[^"]+/t/[0-9a-f]+\.[0-9a-f]+/c/{link.pk}/"', html)
    assert re.search(r'<img src="http[^"]+/t/[0-9a-f]+\.[0-9a-f]+/o\.gif"', html)


def test_a_contact_who_left_the_list_after_the_claim_gets_nothing(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory=str(outbox))
    audience = make_audience(3)
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[audience], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    batch = services.batch_claim(dispatcher_id=dispatcher.pk)
    leaver = audience.contacts.order_by("id").first()
    Subscription.objects.filter(contact=leaver).delete()  # what the preferences page does

    services.batch_send(batch_id=batch.pk)

    item = CampaignItem.objects.get(campaign=campaign, contact=leaver)
    assert (item.status, item.skip_reason) == (S.SKIPPED, "unsubscribed")
    assert len(messages(outbox)) == 2


def test_read_receipts_are_asked_for_only_when_the_dispatcher_wants_them(
    tmp_path: Path,
) -> None:
    _, outbox = send(tmp_path / "plain")
    assert "Disposition-Notification-To" not in messages(outbox)[0]

    outbox = tmp_path / "receipts" / "outbox"
    dispatcher = make_dispatcher(
        delivery_mode="pickup", pickup_directory=str(outbox), request_read_receipts=True
    )
    make_campaign(
        dispatcher=dispatcher,
        lists=[make_audience(1, name="R", domain="r.example")],
        status=Campaign.Status.SCHEDULED,
    )
    services.items_generate()
    batch = services.batch_claim(dispatcher_id=dispatcher.pk)
    services.batch_send(batch_id=batch.pk)
    assert messages(outbox)[0]["Disposition-Notification-To"] == "news@herald.test"


@pytest.mark.parametrize(("check", "sent"), [(True, 1), (False, 2)])
def test_the_send_time_suppression_check_can_be_switched_off(
    tmp_path: Path, check: bool, sent: int
) -> None:
    outbox = tmp_path / "outbox"
    dispatcher = make_dispatcher(
        delivery_mode="pickup", pickup_directory=str(outbox), check_suppressions=check
    )
    audience = make_audience(2)
    make_campaign(dispatcher=dispatcher, lists=[audience], status=Campaign.Status.SCHEDULED)
    services.items_generate()
    services.suppression_add(pattern="user0@example.org", source="manual")  # after listing

    batch = services.batch_claim(dispatcher_id=dispatcher.pk)
    services.batch_send(batch_id=batch.pk)

    assert len(messages(outbox)) == sent


def test_a_domain_suppressed_after_listing_is_skipped_at_send_time_whatever_its_case(
    tmp_path: Path,
) -> None:
    outbox = tmp_path / "outbox"
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory=str(outbox))
    lists = [make_audience(2), make_audience(2, name="Partners", domain="Blocked.Example")]
    campaign = make_campaign(dispatcher=dispatcher, lists=lists, status=Campaign.Status.SCHEDULED)
    services.items_generate()
    services.suppression_add(pattern="*@blocked.example", source="manual")  # after listing

    services.batch_send(batch_id=services.batch_claim(dispatcher_id=dispatcher.pk).pk)

    assert sorted(str(m["To"]).split("<")[1].rstrip(">") for m in messages(outbox)) == [
        "user0@example.org",
        "user1@example.org",
    ]
    skipped = CampaignItem.objects.filter(campaign=campaign, status=CampaignItem.Status.SKIPPED)
    assert sorted(skipped.values_list("contact__email", "skip_reason")) == [
        ("user0@Blocked.Example", "suppressed"),
        ("user1@Blocked.Example", "suppressed"),
    ]
