"""The per-status counters the database keeps for each campaign: always
equal to counting the items, whatever moves them."""

from __future__ import annotations

import pytest
from django.db.models import Count

from campaigns import services
from campaigns.models import Campaign, CampaignItem, CampaignStatusCount
from campaigns.selectors import campaign_counts
from tests.helpers import make_audience, make_campaign, make_dispatcher

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


def counted(campaign: Campaign) -> dict[str, int]:
    rows = campaign.items.values("status").annotate(n=Count("id")).order_by()
    return {row["status"]: row["n"] for row in rows}


def test_the_counters_follow_every_move_of_the_items(tmp_path) -> None:  # type: ignore[no-untyped-def]
    dispatcher = make_dispatcher(
        delivery_mode="pickup", pickup_directory=str(tmp_path), batch_size=40
    )
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(100)], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    assert campaign_counts(campaign_id=campaign.pk) == {S.PENDING: 100} == counted(campaign)

    batch = services.batch_claim(dispatcher_id=dispatcher.pk)
    assert campaign_counts(campaign_id=campaign.pk) == {S.PENDING: 60, S.CLAIMED: 40}
    services.batch_send(batch_id=batch.pk)
    assert campaign_counts(campaign_id=campaign.pk) == {S.PENDING: 60, S.SENT: 40}

    ids = list(campaign.items.filter(status=S.PENDING).values_list("pk", flat=True)[:5])
    CampaignItem.objects.filter(pk__in=ids).update(status=S.FAILED)
    CampaignItem.objects.filter(pk__in=ids[:2]).delete()
    assert campaign_counts(campaign_id=campaign.pk) == counted(campaign)
    assert campaign_counts(campaign_id=campaign.pk)[S.FAILED] == 3


def test_a_deleted_campaign_leaves_no_counters(tmp_path) -> None:  # type: ignore[no-untyped-def]
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory=str(tmp_path))
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(10)], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    assert CampaignStatusCount.objects.filter(campaign_id=campaign.pk).exists()

    campaign.delete()

    assert not CampaignStatusCount.objects.filter(campaign_id=campaign.pk).exists()
