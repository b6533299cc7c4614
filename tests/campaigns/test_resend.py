"""The dispatcher option "set erroneous entries back to unsent after
sending": failed entries get one more try before the campaign completes.
(Sending again by hand is the campaign page's: tests/campaigns/test_actions.py.)"""

from __future__ import annotations

from collections import Counter

import pytest
from django.test import Client
from django.urls import reverse

from accounts.roles import MARKETER
from accounts.services import user_create
from campaigns import services
from campaigns.models import Campaign, CampaignItem
from dispatchers.models import Dispatcher
from tests.helpers import make_audience, make_campaign, make_dispatcher, make_smtp_server
from tests.smtp import SmtpSink

pytestmark = pytest.mark.django_db
S = CampaignItem.Status
CHANGELIST = reverse("admin:campaigns_campaign_changelist")


def refuse_once(*addresses: str) -> tuple[Counter[str], object]:
    """An RCPT rule refusing each of ``addresses`` (5.7.1, not a bad mailbox) once."""
    seen: Counter[str] = Counter()

    def rule(address: str) -> str | None:
        seen[address] += 1
        if address in addresses and seen[address] == 1:
            return "550 5.7.1 Message rejected by policy"
        return None

    return seen, rule


def send_all(dispatcher: Dispatcher) -> None:
    while (batch := services.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
        services.batch_send(batch_id=batch.pk)
    services.campaigns_complete()


def started(dispatcher: Dispatcher, count: int = 3) -> Campaign:
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(count)], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    return campaign


@pytest.fixture
def marketer(client: Client) -> Client:
    client.force_login(
        user_create(username="mia", email="mia@herald.test", password="x", role=MARKETER)
    )
    return client


def act(client: Client, action: str, campaign: Campaign, **extra: str) -> str:
    data = {"action": action, "_selected_action": [campaign.pk], **extra}
    if "confirm" not in extra:
        data["index"] = "0"  # as the changelist's action bar posts it
    return client.post(CHANGELIST, data, follow=True).content.decode()


def test_the_dispatcher_option_retries_failed_entries_once_before_completing() -> None:
    seen, rule = refuse_once("user1@example.org")
    with SmtpSink(rcpt_rule=rule) as sink:  # type: ignore[arg-type]
        dispatcher = make_dispatcher(
            smtp_server=make_smtp_server(port=sink.port), retry_failed_after_sending=True
        )
        campaign = started(dispatcher)
        send_all(dispatcher)  # user1 refused; completing sets it back to unsent instead
        campaign.refresh_from_db()
        assert campaign.status == Campaign.Status.SENDING
        send_all(dispatcher)

    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.COMPLETED
    assert sink.per_recipient() == {f"user{i}@example.org": 1 for i in range(3)}
    assert seen["user1@example.org"] == 2


def test_an_entry_that_fails_again_stays_failed_and_the_campaign_completes() -> None:
    with SmtpSink(rcpt_rule=lambda a: "550 5.7.1 No" if a == "user1@example.org" else None) as sink:
        dispatcher = make_dispatcher(
            smtp_server=make_smtp_server(port=sink.port), retry_failed_after_sending=True
        )
        campaign = started(dispatcher)
        for _ in range(4):
            send_all(dispatcher)

    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.COMPLETED
    assert campaign.failed_count == 1
    item = CampaignItem.objects.get(contact__email="user1@example.org")
    assert (item.status, item.attempts) == (S.FAILED, 2)


def test_without_the_option_failed_entries_stay_failed() -> None:
    seen, rule = refuse_once("user1@example.org")
    with SmtpSink(rcpt_rule=rule) as sink:  # type: ignore[arg-type]
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        campaign = started(dispatcher)
        send_all(dispatcher)

    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.COMPLETED
    assert CampaignItem.objects.get(contact__email="user1@example.org").status == S.FAILED
