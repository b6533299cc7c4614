"""A campaign on a pool of three dispatchers, each relaying through its own
real SMTP server (aiosmtpd, AUTH with the credentials stored on the SMTP
server record). One server goes down in the middle of a session, another
starts refusing the login: every recipient still gets the message exactly
once, through the healthy members, each member within its hourly and
daily limits in every rolling window, and the stopped member rejoins once
its server is back.

The clock is compressed: the test is the beat and the worker, calling
process-messages and each batch it queued on a virtual clock five minutes
a tick (``now=``), so a day and more of sending runs in seconds. Batches
are sent in this process, from the ids the claims queue for the broker."""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.services import user_create
from campaigns import services
from campaigns.models import Batch, Campaign, CampaignItem
from dispatchers.models import Dispatcher, DispatcherPool, PoolMember, RateUsage
from jobs.models import Notification
from smtpservers.models import SmtpServer
from tests.helpers import make_audience, make_campaign, make_dispatcher
from tests.smtp import AuthSink

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
S = CampaignItem.Status
TICK = timedelta(minutes=5)
RECIPIENTS = 450
# (name, per hour, per day, batch size): 130 a day between them is not enough
# for the audience once two are out, so the daily limits bind and the
# campaign finishes the next day.
MEMBERS = [("Alpha", 60, 200, 20), ("Bravo", 40, 150, 20), ("Charlie", 30, None, 10)]


class Pool:
    """The cast: three servers with their own accounts, three dispatchers
    in one pool, a campaign on it, and the queue its claims feed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sinks: dict[str, AuthSink] = {}
        self.dispatchers: dict[str, Dispatcher] = {}
        self.pool = DispatcherPool.objects.create(name="Newsletter pool")
        for name, per_hour, per_day, batch_size in MEMBERS:
            sink = AuthSink(username=f"{name.lower()}@relay.test", password=f"{name}-s3cret")
            sink.controller.start()
            server = SmtpServer.objects.create(
                name=f"{name} relay",
                host="127.0.0.1",
                port=sink.port,
                timeout=5,
                auth_method=SmtpServer.AuthMethod.CLEAR_TEXT,
                username=sink.handler.username,
                password=sink.handler.password,
                allow_insecure_auth=True,  # loopback only
            )
            dispatcher = make_dispatcher(
                name=name,
                smtp_server=server,
                server_name=f"pool{os.getpid()}",
                messages_per_hour=per_hour,
                messages_per_day=per_day,
                batch_size=batch_size,
            )
            PoolMember.objects.create(pool=self.pool, dispatcher=dispatcher, priority=1)
            self.sinks[name], self.dispatchers[name] = sink, dispatcher
        self.campaign = make_campaign(
            dispatcher=self.dispatchers["Alpha"],
            lists=[make_audience(RECIPIENTS)],
        )
        Campaign.objects.filter(pk=self.campaign.pk).update(pool=self.pool)
        self.queued: list[tuple[int, str]] = []
        # The broker carries only batch ids: keep them here instead, and be
        # the worker that sends them.
        monkeypatch.setattr(
            services, "_enqueue_batch", lambda batch, queue: self.queued.append((batch.pk, queue))
        )

    def stop(self) -> None:
        for sink in self.sinks.values():
            sink.controller.stop()

    def tick(self, now: datetime) -> list[tuple[Batch, list[int]]]:
        """One run of process-messages, then every batch it queued, sent;
        returns the batches with the items each was given."""
        services.items_generate(now=now)
        services.messages_process(now=now)
        sent = []
        while self.queued:
            batch_id, queue = self.queued.pop(0)
            assert queue == f"dispatch.pool{os.getpid()}"
            items = list(
                CampaignItem.objects.filter(batch_id=batch_id).values_list("pk", flat=True)
            )
            services.batch_send(batch_id=batch_id, now=now)
            sent.append((Batch.objects.select_related("dispatcher").get(pk=batch_id), items))
        services.campaigns_complete(now=now)
        self.campaign.refresh_from_db()
        assert self.campaign.status in (Campaign.Status.SENDING, Campaign.Status.COMPLETED), (
            self.campaign.paused_reason
        )
        return sent

    def received(self) -> Counter[str]:
        """How often each Message-ID arrived, over the three servers."""
        return Counter(
            r.message["Message-ID"] for sink in self.sinks.values() for r in sink.received
        )

    def status_cells(self, client: Client) -> str:
        page = client.get(reverse("admin:dispatchers_dispatcherpool_change", args=[self.pool.pk]))
        assert page.status_code == 200
        return page.content.decode()


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Any:
    cast = Pool(monkeypatch)
    yield cast
    cast.stop()


@pytest.fixture
def admin_client(client: Client) -> Client:
    admin = user_create(
        username="root", email="root@example.org", password="x-Pass-4567", role="Administrator"
    )
    client.force_login(admin)
    return client


def member_row(page: str, name: str) -> str:
    """The pool page's table row of one member."""
    start = page.index(f"<tr><td>{name}</td>")
    return page[start : page.index("</tr>", start)]


def assert_within_limits(dispatcher: Dispatcher) -> None:
    """Every rolling hour and day of the member's ledger, minute by minute."""
    ledger = dict(RateUsage.objects.filter(dispatcher=dispatcher).values_list("minute", "count"))
    for end in ledger:
        hour = sum(n for m, n in ledger.items() if end - timedelta(minutes=60) < m <= end)
        assert hour <= dispatcher.messages_per_hour, f"{dispatcher}: {hour} in the hour to {end}"
        if dispatcher.messages_per_day:
            day = sum(n for m, n in ledger.items() if end - timedelta(days=1) < m <= end)
            assert day <= dispatcher.messages_per_day, f"{dispatcher}: {day} in the day to {end}"


def test_a_pool_delivers_everyone_once_through_a_stopped_server_and_a_refused_login(
    pool: Pool, admin_client: Client
) -> None:
    start = timezone.now().replace(second=0, microsecond=0)
    bravo, charlie = pool.dispatchers["Bravo"], pool.dispatchers["Charlie"]
    services.campaign_schedule(campaign=pool.campaign, when=start)
    clock = [start - TICK]

    def tick() -> list[tuple[Batch, list[int]]]:
        clock[0] += TICK
        assert clock[0] < start + timedelta(days=2), "the campaign never completed"
        return pool.tick(clock[0])

    def ticks_until(minutes: int) -> None:
        while clock[0] < start + timedelta(minutes=minutes):
            tick()

    def received() -> dict[str, int]:
        return {name: len(sink.received) for name, sink in pool.sinks.items()}

    # The first hour: all three spend their hourly limits at once.
    tick()
    assert received() == {"Alpha": 60, "Bravo": 40, "Charlie": 30}
    ticks_until(60)
    assert received() == {"Alpha": 60, "Bravo": 40, "Charlie": 30}  # the hour holds

    # When the hour has passed, Bravo's server goes down after 25 more
    # messages, in the middle of its second batch's session.
    pool.sinks["Bravo"].go_down_after(25)
    tick()
    assert received() == {"Alpha": 120, "Bravo": 65, "Charlie": 60}
    # The rest of that batch went back untouched: never on the wire, not
    # counted as an attempt, not in doubt.
    waiting = CampaignItem.objects.filter(campaign=pool.campaign, status=S.PENDING)
    assert waiting.count() == RECIPIENTS - 120 - 65 - 60
    assert set(waiting.values_list("attempts", "possibly_duplicated")) == {(0, False)}

    # Its next claim finds the server gone: out of rotation, backing off,
    # the items handed back to the pool, the campaign sending on.
    [(batch, handed_back)] = tick()
    failed_at = clock[0]
    assert batch.dispatcher == bravo and len(handed_back) == 15
    back = CampaignItem.objects.filter(pk__in=handed_back)
    assert set(back.values_list("status", "batch", "attempts", "possibly_duplicated")) == {
        (S.PENDING, None, 0, False)
    }
    bravo.refresh_from_db()
    assert bravo.is_enabled and bravo.retry_after > failed_at
    assert services.batch_claim(dispatcher_id=bravo.pk, now=failed_at) is None
    note = Notification.objects.get(key=f"dispatcher:{bravo.pk}:failover")
    assert note.resolved_at is None and "went back to the pool" in note.message
    row = member_row(pool.status_cells(admin_client), "Bravo")
    assert "Out of rotation until" in row and "Connection refused" in row

    # Charlie's provider revokes its password; Bravo stays down.
    pool.sinks["Charlie"].handler.refuse_logins = True
    ticks_until(150)
    assert received()["Charlie"] == 60  # nothing since
    assert received()["Alpha"] == 180  # Alpha went on
    charlie.refresh_from_db()
    assert not charlie.is_enabled
    assert "rejected the login" in charlie.paused_reason
    auth_note = Notification.objects.get(resolved_at__isnull=True, title__contains="Charlie relay")
    assert "rejected the login" in auth_note.title and "Charlie" in auth_note.message
    page = pool.status_cells(admin_client)
    row = member_row(page, "Charlie")
    assert "Paused: Stopped: the SMTP server “Charlie relay” rejected the login" in row
    assert "Stopped: Authentication rejected: 535" in row  # the last failover, with its cause
    assert "Connection refused" in member_row(page, "Bravo")

    # Bravo's server comes back: Bravo rejoins by itself within its back-off.
    pool.sinks["Bravo"].restart()
    back_at = clock[0]
    before = received()["Bravo"]
    while bravo.retry_after is not None:
        tick()
        bravo.refresh_from_db()
    assert clock[0] - back_at <= timedelta(minutes=20)
    assert received()["Bravo"] > before and bravo.consecutive_failures == 0
    note.refresh_from_db()
    assert note.resolved_at is not None
    assert "In rotation" in member_row(pool.status_cells(admin_client), "Bravo")

    while pool.campaign.status != Campaign.Status.COMPLETED:
        tick()
    assert clock[0] > start + timedelta(days=1)  # the daily limits held it back

    # Everyone once, nobody twice, nothing lost.
    by_message_id = pool.received()
    assert len(by_message_id) == RECIPIENTS and set(by_message_id.values()) == {1}
    recipients = Counter(r for s in pool.sinks.values() for r in s.per_recipient().elements())
    assert len(recipients) == RECIPIENTS and set(recipients.values()) == {1}
    items = CampaignItem.objects.filter(campaign=pool.campaign)
    assert set(items.values_list("status", "attempts", "possibly_duplicated")) == {
        (S.SENT, 1, False)
    }
    # Through the healthy members only, each within its limits, and each
    # member's ledger is what its server really took.
    for name, dispatcher in pool.dispatchers.items():
        spent = sum(RateUsage.objects.filter(dispatcher=dispatcher).values_list("count", flat=True))
        assert spent == len(pool.sinks[name].received), name
        assert_within_limits(dispatcher)
    assert items.filter(batch__dispatcher=charlie).count() == 60
    charlie.refresh_from_db()
    assert not charlie.is_enabled  # until an administrator fixes the password
