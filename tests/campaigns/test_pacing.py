"""Pacing: a spreading dispatcher spends its hourly limit across the hour,
never more than its share of any stretch of minutes, and the hourly limit
stays exact whatever the pacing."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from campaigns import services
from campaigns.models import Batch, Campaign, CampaignItem
from dispatchers.models import Dispatcher, RateUsage
from tests.helpers import make_audience, make_campaign, make_dispatcher

pytestmark = pytest.mark.django_db
S = CampaignItem.Status
SPREAD = Dispatcher.Pacing.SPREAD
FAST = Dispatcher.Pacing.FAST


def pickup_dispatcher(**extra: object) -> Dispatcher:
    return make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused", **extra)


def backlog(count: int, dispatcher: Dispatcher) -> Campaign:
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[make_audience(count)], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    return campaign


def backlog_named(dispatcher: Dispatcher, count: int, name: str) -> Campaign:
    audience = make_audience(count, name=name, domain=f"{name.lower()}.example")
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[audience], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    return campaign


def claim_all(dispatcher: Dispatcher, *, now: datetime) -> list[int]:
    """Claim until the dispatcher gets nothing more at this moment, closing
    each batch so the open-batch cap does not stop the claiming."""
    sizes = []
    while (batch := services.batch_claim(dispatcher_id=dispatcher.pk, now=now)) is not None:
        sizes.append(batch.size)
        Batch.objects.filter(pk=batch.pk).update(finished_at=now)
    return sizes


@pytest.fixture
def start() -> datetime:
    return timezone.now().replace(second=0, microsecond=0)


def test_spreading_600_an_hour_claims_10_a_minute(start: datetime) -> None:
    dispatcher = pickup_dispatcher(messages_per_hour=600, batch_size=50, pacing=SPREAD)
    backlog(40, dispatcher)

    assert claim_all(dispatcher, now=start + timedelta(seconds=5)) == [10]
    assert claim_all(dispatcher, now=start + timedelta(seconds=50)) == []
    assert claim_all(dispatcher, now=start + timedelta(minutes=1, seconds=5)) == [10]
    assert claim_all(dispatcher, now=start + timedelta(minutes=1, seconds=55)) == []
    assert claim_all(dispatcher, now=start + timedelta(minutes=2)) == [10]


def test_a_minute_skipped_is_not_made_up_in_one_burst(start: datetime) -> None:
    # Nothing was due for ten minutes: the next minute still takes one
    # minute's share, not the ten minutes' worth at once.
    dispatcher = pickup_dispatcher(messages_per_hour=600, batch_size=50, pacing=SPREAD)
    backlog(40, dispatcher)

    assert claim_all(dispatcher, now=start + timedelta(minutes=10)) == [10]


def test_spreading_never_exceeds_the_limit_in_any_rolling_hour_and_uses_it(
    start: datetime,
) -> None:
    dispatcher = pickup_dispatcher(messages_per_hour=600, batch_size=50, pacing=SPREAD)
    backlog(1300, dispatcher)

    per_minute = []
    for minute in range(125):
        # Three runs of process-messages a minute, as beat may well do.
        claimed = 0
        for second in (0, 20, 40):
            now = start + timedelta(minutes=minute, seconds=second)
            claimed += sum(claim_all(dispatcher, now=now))
        per_minute.append(claimed)

    assert max(per_minute) == 10
    # Any rolling hour touches 61 of the ledger's minutes: those hold 600 at most.
    spans = [sum(per_minute[m : m + 61]) for m in range(len(per_minute) - 60)]
    assert max(spans) == 600
    # With a backlog, every hour uses its limit within 2% (the issue asks for 95%).
    hours = [sum(per_minute[m : m + 60]) for m in range(len(per_minute) - 59)]
    assert min(hours) >= 588


def test_a_small_limit_is_spread_one_message_at_a_time(start: datetime) -> None:
    # 12 an hour is one every 5 minutes, not 12 in the first 12 minutes.
    dispatcher = pickup_dispatcher(messages_per_hour=12, batch_size=5, pacing=SPREAD)
    backlog(30, dispatcher)

    claimed_at = [
        minute
        for minute in range(60)
        if claim_all(dispatcher, now=start + timedelta(minutes=minute)) == [1]
    ]

    assert claimed_at == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55]


def test_spreading_keeps_the_hourly_limit_after_a_fast_hour(start: datetime) -> None:
    dispatcher = pickup_dispatcher(messages_per_hour=120, batch_size=50, pacing=FAST)
    backlog(300, dispatcher)
    assert claim_all(dispatcher, now=start) == [50, 50, 20]

    Dispatcher.objects.filter(pk=dispatcher.pk).update(pacing=SPREAD)

    # The first minute's 120 leave the rolling hour only once all of that
    # minute is more than an hour ago.
    for minute in range(1, 61):
        assert claim_all(dispatcher, now=start + timedelta(minutes=minute)) == []
    assert claim_all(dispatcher, now=start + timedelta(minutes=61)) == [2]


def test_as_fast_as_allowed_claims_the_hourly_limit_at_once(start: datetime) -> None:
    dispatcher = pickup_dispatcher(messages_per_hour=600, batch_size=50, pacing=FAST)
    campaign = backlog(700, dispatcher)

    assert claim_all(dispatcher, now=start) == [50] * 12
    assert claim_all(dispatcher, now=start + timedelta(minutes=59)) == []
    assert CampaignItem.objects.filter(campaign=campaign, status=S.CLAIMED).count() == 600
    assert sum(RateUsage.objects.values_list("count", flat=True)) == 600


def test_new_dispatchers_spread_by_default() -> None:
    dispatcher = Dispatcher(name="New", server_name="mailer1")

    assert dispatcher.pacing == SPREAD


def test_blocks_send_n_then_pause_m_minutes(start: datetime) -> None:
    dispatcher = pickup_dispatcher(
        messages_per_hour=10_000,
        batch_size=30,
        pacing=Dispatcher.Pacing.BLOCKS,
        block_size=50,
        block_pause_minutes=10,
    )
    backlog(200, dispatcher)

    assert claim_all(dispatcher, now=start) == [30, 20]  # one block of 50
    assert claim_all(dispatcher, now=start + timedelta(minutes=5)) == []  # pausing
    assert claim_all(dispatcher, now=start + timedelta(minutes=9, seconds=59)) == []
    assert claim_all(dispatcher, now=start + timedelta(minutes=10)) == [30, 20]  # next block
    assert claim_all(dispatcher, now=start + timedelta(minutes=15)) == []


def test_a_claim_that_waited_for_the_lock_counts_in_the_minute_already_spent_in(
    start: datetime,
) -> None:
    """A worker took its time, then waited while another claimed in the next
    minute: its claim belongs to that minute, not the earlier one, or the
    pause before the block would be a minute short."""
    dispatcher = pickup_dispatcher(
        messages_per_hour=10_000,
        batch_size=20,
        pacing=Dispatcher.Pacing.BLOCKS,
        block_size=50,
        block_pause_minutes=5,
    )
    backlog(200, dispatcher)
    assert claim_all(dispatcher, now=start) == [20, 20, 10]
    next_block = start + timedelta(minutes=5)

    first = services.batch_claim(dispatcher_id=dispatcher.pk, now=next_block)
    late = services.batch_claim(dispatcher_id=dispatcher.pk, now=next_block - timedelta(seconds=1))

    assert (first.size, late.size) == (20, 20)
    assert late.created_at == next_block
    assert claim_all(dispatcher, now=next_block) == [10]  # the rest of this block
    spent = dict(RateUsage.objects.filter(dispatcher=dispatcher).values_list("minute", "count"))
    assert spent == {start: 50, next_block: 50}  # two blocks, a full pause between


def test_a_block_stays_within_the_hourly_limit(start: datetime) -> None:
    dispatcher = pickup_dispatcher(
        messages_per_hour=60,
        batch_size=100,
        pacing=Dispatcher.Pacing.BLOCKS,
        block_size=50,
        block_pause_minutes=1,
    )
    backlog(200, dispatcher)

    assert claim_all(dispatcher, now=start) == [50]
    assert claim_all(dispatcher, now=start + timedelta(minutes=2)) == [10]  # hourly limit: 60
    assert claim_all(dispatcher, now=start + timedelta(minutes=30)) == []
    assert claim_all(dispatcher, now=start + timedelta(minutes=60)) == []
    assert claim_all(dispatcher, now=start + timedelta(minutes=61)) == [50]


def test_a_daily_limit_holds_over_any_24_hours(start: datetime) -> None:
    dispatcher = pickup_dispatcher(
        messages_per_hour=100, messages_per_day=250, batch_size=100, pacing=FAST
    )
    backlog(1000, dispatcher)

    # Every 61 minutes: each claim's hour is then wholly past.
    spent = [sum(claim_all(dispatcher, now=start + timedelta(minutes=61 * h))) for h in range(26)]
    assert spent[:3] == [100, 100, 50]
    assert sum(spent[:24]) == 250  # the 24 hours from the first claim
    assert spent[24:26] == [100, 100]  # the first hours' messages have left the window
    assert RateUsage.objects.filter(dispatcher=dispatcher).count() >= 3  # ledger kept 24 h


def test_blocks_need_their_size_and_pause() -> None:
    dispatcher = Dispatcher(pacing=Dispatcher.Pacing.BLOCKS, type=Dispatcher.Type.SMS)
    with pytest.raises(ValidationError) as error:
        dispatcher.clean()
    assert set(error.value.message_dict) == {"block_size", "block_pause_minutes"}


def test_a_warm_up_caps_each_day_and_grows_by_its_factor(start: datetime) -> None:
    start = start.replace(hour=1, minute=0)  # days counted in whole dates, far from midnight
    dispatcher = pickup_dispatcher(
        messages_per_hour=1000,
        batch_size=1000,
        pacing=FAST,
        warmup_started_on=start.date(),
        warmup_first_day=50,
        warmup_growth=Decimal("2.00"),
    )
    backlog(1000, dispatcher)

    assert sum(claim_all(dispatcher, now=start)) == 50  # day 1
    assert sum(claim_all(dispatcher, now=start + timedelta(hours=12))) == 0
    assert sum(claim_all(dispatcher, now=start + timedelta(days=1, minutes=1))) == 100  # day 2
    assert sum(claim_all(dispatcher, now=start + timedelta(days=2, minutes=2))) == 200  # day 3


def test_a_warm_up_needs_its_first_day_and_growth() -> None:
    dispatcher = Dispatcher(type=Dispatcher.Type.SMS, warmup_started_on=timezone.now().date())
    with pytest.raises(ValidationError) as error:
        dispatcher.clean()
    assert set(error.value.message_dict) == {"warmup_first_day", "warmup_growth"}


def test_a_campaign_stops_at_the_limit_per_sending_task_and_says_so(start: datetime) -> None:
    dispatcher = pickup_dispatcher(batch_size=30, task_message_limit=70)
    campaign = backlog(100, dispatcher)
    small = backlog_named(dispatcher, 50, "Small")

    claimed = claim_all(dispatcher, now=start)

    assert sum(claimed) == 70 + 50
    assert campaign.items.exclude(status=CampaignItem.Status.PENDING).count() == 70
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.PAUSED
    assert campaign.paused_reason.startswith("Stopped after 70 messages: the limit per sending")
    small.refresh_from_db()
    assert small.status == Campaign.Status.SENDING  # its 50 are all out: it completes as usual
