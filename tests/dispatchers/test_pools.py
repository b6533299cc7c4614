"""Dispatcher pools: a campaign sends at the sum of its members' rates,
none over its own limit, and a failing member hands its work over to the
others without losing or doubling a message."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.services import user_create
from campaigns import services
from campaigns.models import Batch, Campaign, CampaignItem
from config.embedded import free_port
from dispatchers.models import Dispatcher, DispatcherPool, PoolMember, RateUsage
from jobs.models import Notification
from tests.helpers import make_audience, make_campaign, make_dispatcher, make_smtp_server
from tests.smtp import SmtpSink

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


def pickup(name: str, **extra: object) -> Dispatcher:
    return make_dispatcher(
        name=name, delivery_mode="pickup", pickup_directory="/tmp/herald-test-outbox", **extra
    )


def pool_of(*members: tuple[Dispatcher, int] | tuple[Dispatcher, int, int]) -> DispatcherPool:
    """Members as (dispatcher, priority) or (dispatcher, priority, weight)."""
    pool = DispatcherPool.objects.create(name="Main pool")
    for dispatcher, priority, *weight in members:
        PoolMember.objects.create(
            pool=pool, dispatcher=dispatcher, priority=priority, weight=weight[0] if weight else 1
        )
    return pool


def pooled_campaign(pool: DispatcherPool, count: int) -> Campaign:
    first = pool.members.first().dispatcher
    campaign = make_campaign(
        dispatcher=first, lists=[make_audience(count)], status=Campaign.Status.SCHEDULED
    )
    Campaign.objects.filter(pk=campaign.pk).update(pool=pool)
    services.items_generate()
    return campaign


def claimed_by(campaign: Campaign) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in campaign.items.filter(status=S.CLAIMED).values_list(
        "batch__dispatcher__name", flat=True
    ):
        counts[name] = counts.get(name, 0) + 1
    return counts


def close_batches(now: datetime) -> None:
    Batch.objects.update(finished_at=now)


def test_a_pool_sends_at_the_sum_of_its_members_each_within_its_own_limit() -> None:
    now = timezone.now()
    big = pickup("Big", messages_per_hour=30, batch_size=100)
    small = pickup("Small", messages_per_hour=20, batch_size=100)
    campaign = pooled_campaign(pool_of((big, 1), (small, 1)), 100)

    services.messages_process(now=now)
    assert claimed_by(campaign) == {"Big": 30, "Small": 20}
    close_batches(now)
    services.messages_process(now=now + timedelta(minutes=30))
    assert campaign.items.filter(status=S.CLAIMED).count() == 50  # nothing more this hour
    for dispatcher in (big, small):
        used = sum(RateUsage.objects.filter(dispatcher=dispatcher).values_list("count", flat=True))
        assert used == dispatcher.messages_per_hour


def test_the_first_priority_is_spent_first() -> None:
    first = pickup("First", messages_per_hour=1000, batch_size=100)
    second = pickup("Second", messages_per_hour=1000, batch_size=100)
    campaign = pooled_campaign(pool_of((second, 2), (first, 1)), 60)

    services.messages_process(now=timezone.now())
    assert claimed_by(campaign) == {"First": 60}


def weighted(recipients: int, *, heavy_per_hour: int = 1000) -> tuple[Campaign, Dispatcher]:
    """Heavy (weight 3) and Light (weight 1), equal priority, batches of 50."""
    heavy = pickup("Heavy", messages_per_hour=heavy_per_hour, batch_size=50)
    light = pickup("Light", messages_per_hour=1000, batch_size=50)
    return pooled_campaign(pool_of((light, 1, 1), (heavy, 1, 3)), recipients), light


def test_members_of_equal_priority_share_the_work_by_weight() -> None:
    campaign, _ = weighted(128)
    # Turns of 48 and 16 (the unit: 50 // 3), the one behind its share next.
    services.messages_process(now=timezone.now())
    assert claimed_by(campaign) == {"Heavy": 96, "Light": 32}


def test_a_member_out_of_budget_leaves_its_share_to_the_others() -> None:
    campaign, _ = weighted(160, heavy_per_hour=30)
    services.messages_process(now=timezone.now())
    assert claimed_by(campaign) == {"Heavy": 30, "Light": 130}  # whole batches once alone


def test_a_successor_claim_takes_no_more_than_the_members_turn() -> None:
    campaign, light = weighted(160)
    first = services.batch_claim(dispatcher_id=light.pk)
    assert first is not None and first.size == 50  # a claim of its own: a whole batch
    close_batches(timezone.now())
    assert services.batch_successor_claim(batch_id=first.pk).size == 16  # 50 // 3
    assert campaign.items.filter(status=S.CLAIMED).count() == 66


def test_a_failing_member_hands_its_items_to_the_others_and_rejoins_when_healthy() -> None:
    dead_port = free_port()  # nothing listens here
    with SmtpSink() as sink:
        broken = make_dispatcher(name="Broken", smtp_server=make_smtp_server(port=dead_port))
        healthy = make_dispatcher(name="Healthy", smtp_server=make_smtp_server(port=sink.port))
        pool = pool_of((broken, 1), (healthy, 2))
        campaign = pooled_campaign(pool, 40)

        batch = services.batch_claim(dispatcher_id=broken.pk)
        assert services.batch_send(batch_id=batch.pk) == 0  # connection refused
        broken.refresh_from_db()
        assert broken.is_enabled and broken.retry_after > timezone.now()  # backing off
        assert services.batch_claim(dispatcher_id=broken.pk) is None
        member = PoolMember.objects.get(dispatcher=broken)
        assert member.last_failover_reason.startswith("Connection refused: nothing accepts")
        note = Notification.objects.get(key=f"dispatcher:{broken.pk}:failover")
        assert "went back to the pool" in note.message

        while (batch := services.batch_claim(dispatcher_id=healthy.pk)) is not None:
            services.batch_send(batch_id=batch.pk)
        assert campaign.items.filter(status=S.SENT).count() == 40
        assert set(sink.per_recipient().values()) == {1}  # each recipient exactly once
        assert len(sink.per_recipient()) == 40

        # Fixed and past its back-off, the member takes work again.
        broken.smtp_server.port = sink.port
        broken.smtp_server.save()
        Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.SENDING)
        newcomer = make_audience(3, name="Late", domain="late.example")
        campaign.lists.add(newcomer)
        Campaign.objects.filter(pk=campaign.pk).update(
            status=Campaign.Status.SCHEDULED, generated_through=0, audience_complete=False
        )
        services.items_generate()
        later = broken.retry_after + timedelta(seconds=1)
        batch = services.batch_claim(dispatcher_id=broken.pk, now=later)
        assert batch is not None and services.batch_send(batch_id=batch.pk) == 3
    broken.refresh_from_db()
    assert broken.retry_after is None and broken.consecutive_failures == 0
    note.refresh_from_db()
    assert note.resolved_at is not None


def test_a_member_of_the_wrong_type_is_refused() -> None:
    pool = DispatcherPool.objects.create(name="SMS pool", type="SMS")
    email = pickup("Mail")
    with pytest.raises(ValidationError) as error:
        PoolMember(pool=pool, dispatcher=email).clean()
    assert "A SMS pool takes SMS dispatchers" in str(error.value)


def test_a_campaign_dispatcher_must_belong_to_its_pool() -> None:
    outsider = pickup("Outsider")
    pool = pool_of((pickup("Member"), 1))
    campaign = Campaign(name="x", dispatcher=outsider, pool=pool)
    with pytest.raises(ValidationError) as error:
        campaign.clean()
    assert "Choose one of the members of the pool" in str(error.value)


def test_the_pool_page_shows_each_members_share_budget_and_health(client: Client) -> None:
    now = timezone.now()
    a = pickup("Alpha", messages_per_hour=30, batch_size=100)
    b = pickup("Beta", messages_per_hour=10, batch_size=100)
    pool = pool_of((a, 1), (b, 1))
    pooled_campaign(pool, 100)
    services.messages_process(now=now)
    Dispatcher.objects.filter(pk=b.pk).update(
        retry_after=now + timedelta(minutes=5), last_error="Connection refused"
    )
    PoolMember.objects.filter(dispatcher=b).update(
        last_failover_at=now, last_failover_reason="Connection refused"
    )
    admin = user_create(
        username="root", email="root@example.org", password="x-Pass-4567", role="Administrator"
    )
    client.force_login(admin)
    page = client.get(reverse("admin:dispatchers_dispatcherpool_change", args=[pool.pk]))
    text = page.content.decode()
    assert "30 / 30" in text and "10 / 10" in text
    assert "75%" in text and "25%" in text
    assert "Out of rotation until" in text and "Connection refused" in text
