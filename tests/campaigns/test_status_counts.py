"""The per-status counters the database keeps for each campaign: always
equal to counting the items, whatever moves them."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection
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


def session_in_another_slot(taken: set[int]) -> psycopg.Connection:
    """A new database session whose counters go to a slot none of ``taken``
    writes (the slot is its backend's number modulo the slots)."""
    while True:
        session = psycopg.connect(**connection.get_connection_params(), autocommit=False)
        slot = session.execute("SELECT pg_backend_pid()").fetchone()[0] % CampaignStatusCount.SLOTS
        if slot not in taken:
            taken.add(slot)
            return session
        session.close()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_workers_write_one_campaigns_items_without_waiting_for_each_other(
    tmp_path,
) -> None:  # type: ignore[no-untyped-def]
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory=str(tmp_path))
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(20)], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    ids = list(campaign.items.order_by("pk").values_list("pk", flat=True))
    mark = "UPDATE campaigns_campaignitem SET status = %s WHERE id = ANY(%s)"
    taken: set[int] = set()
    first, second = session_in_another_slot(taken), session_in_another_slot(taken)
    try:
        # One worker has written results and not committed yet...
        first.execute(mark, [S.SENT, ids[:10]])
        # ...another writes others of the same campaign meanwhile: it must
        # not queue behind the first one's counter rows.
        second.execute("SET lock_timeout = '2s'")
        second.execute(mark, [S.FAILED, ids[10:15]])
        second.commit()
        first.commit()
    finally:
        first.close()
        second.close()

    assert campaign_counts(campaign_id=campaign.pk) == counted(campaign)
    assert campaign_counts(campaign_id=campaign.pk) == {S.SENT: 10, S.FAILED: 5, S.PENDING: 5}
