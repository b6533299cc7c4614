"""Faults on purpose: killed workers, misbehaving SMTP servers, a flushed
broker, doubled schedulers. Each test ends by itself, bounded in time,
and checks the promise: everyone receives the message, nobody twice
(except items flagged as possibly duplicated, within the stated bound)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
from django.db import connection
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from campaigns import services
from campaigns.models import Batch, Campaign, CampaignItem, Suppression
from config.embedded import redis_server_binary
from tests.helpers import make_audience, make_campaign, make_dispatcher, make_smtp_server
from tests.smtp import Faults, FaultySink, SmtpSink, free_port
from tests.workers import (
    JOB_QUEUE,
    celery_env,
    run_until,
    start_beat,
    start_worker,
    stop,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
S = CampaignItem.Status

FAST = {
    "HERALD_BATCH_LEASE_SECONDS": "8",
    "HERALD_RETRY_FIRST_SECONDS": "1",
    "HERALD_RETRY_MAX_SECONDS": "2",
}


def _beat_every_second() -> None:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(task__startswith="campaigns.tasks.").update(interval=every)


def _campaign(sink_port: int, recipients: int, **dispatcher_fields) -> Campaign:
    dispatcher = make_dispatcher(
        smtp_server=make_smtp_server(port=sink_port),
        server_name=f"faults{os.getpid()}",
        **{"batch_size": 50, "connections": 2, **dispatcher_fields},
    )
    campaign = make_campaign(dispatcher=dispatcher, lists=[make_audience(recipients)])
    _beat_every_second()
    services.campaign_schedule(campaign=campaign)
    return campaign


def _completed(campaign: Campaign) -> bool:
    return Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.COMPLETED


def _send_to_completion(campaign: Campaign, tmp_path: Path, **env: str) -> None:
    run_until(
        lambda: _completed(campaign),
        queues=[campaign.dispatcher.queue],
        env=celery_env(**FAST, **env),
        logs=tmp_path,
        timeout=240,
        what="the campaign to complete",
    )


def _open_batches() -> set[int]:
    return set(Batch.objects.filter(finished_at__isnull=True).values_list("pk", flat=True))


def _settled(campaign: Campaign, batches: set[int]) -> bool:
    """The batches are closed or released, and no item they left in doubt
    waits to go again."""
    if Batch.objects.filter(pk__in=batches, finished_at__isnull=True).exists():
        return False
    return not CampaignItem.objects.filter(
        campaign=campaign, possibly_duplicated=True, status__in=CampaignItem.LIVE
    ).exists()


def _sent(campaign: Campaign) -> int:
    return CampaignItem.objects.filter(campaign=campaign, status=S.SENT).count()


def _everyone(recipients: int) -> set[str]:
    return {f"user{i}@example.org" for i in range(recipients)}


def test_killing_workers_mid_campaign_loses_no_one_and_duplicates_only_flagged_items(tmp_path):
    recipients, kills, concurrency, connections = 2000, 3, 2, 2
    with SmtpSink() as sink:
        campaign = _campaign(sink.port, recipients, connections=connections)
        queues = [JOB_QUEUE, campaign.dispatcher.queue]
        env = celery_env(**FAST)
        logs = [tmp_path / "beat.log"]
        beat = start_beat(logs[0], env)
        worker = start_worker(queues, tmp_path / "worker0.log", env, concurrency=concurrency)
        try:
            for kill in range(1, kills + 1):
                target = kill * recipients // (kills + 2)
                wait_for(
                    lambda t=target: _sent(campaign) >= t,
                    timeout=120,
                    what=f"{target} sent",
                    logs=logs,
                )
                os.killpg(worker.pid, signal.SIGKILL)  # the worker and its pool, mid-send
                worker.wait(timeout=10)
                cut_short = _open_batches()
                worker = start_worker(
                    queues, tmp_path / f"worker{kill}.log", env, concurrency=concurrency
                )
                # Each kill catches fresh items only: the ones it left in
                # doubt are sent again before the next (caught in flight
                # twice, one would rightly arrive three times).
                wait_for(
                    lambda b=cut_short: _settled(campaign, b),
                    timeout=120,
                    what="the killed batches' items to be sent again",
                    logs=logs,
                )
            wait_for(
                lambda: _completed(campaign),
                timeout=240,
                what="the campaign to complete",
                logs=logs,
            )
        finally:
            stop(worker)
            stop(beat)

    received = sink.per_recipient()
    assert set(received) == _everyone(recipients)
    twice = {address for address, count in received.items() if count > 1}
    flagged = set(
        CampaignItem.objects.filter(campaign=campaign, possibly_duplicated=True).values_list(
            "contact__email", flat=True
        )
    )
    print(f"{kills} kills: {len(flagged)} items flagged, {len(twice)} received twice")
    assert twice <= flagged
    # Each kill ends `concurrency` batches, each leaving at most its marked
    # chunk and what was in flight without a recorded result.
    assert len(flagged) <= kills * concurrency * services.in_doubt_bound(connections=connections)
    assert max(received.values()) <= 2
    assert _sent(campaign) == recipients


def test_soft_refusals_and_dropped_sessions_end_with_everyone_delivered_once(tmp_path):
    recipients = 1000
    faults = Faults(soft_rcpt_rate=0.10, drop_session_rate=0.02, seed=7)
    with FaultySink(faults) as sink:
        campaign = _campaign(sink.port, recipients, batch_size=25)
        _send_to_completion(campaign, tmp_path)

    assert sink.per_recipient() == {address: 1 for address in _everyone(recipients)}
    greylisted = sum(
        1 for a in _everyone(recipients) if faults._pick(f"soft:{a}", faults.soft_rcpt_rate)
    )
    assert greylisted > 50  # the fault really happened, and was retried
    assert sink.handler.dropped_sessions >= 1
    assert not CampaignItem.objects.filter(campaign=campaign, possibly_duplicated=True).exists()


def test_bad_mailboxes_are_tried_once_failed_and_suppressed(tmp_path):
    recipients = 400
    faults = Faults(bad_mailbox_rate=0.05, seed=3)
    with FaultySink(faults) as sink:
        campaign = _campaign(sink.port, recipients)
        _send_to_completion(campaign, tmp_path)
        bad = sink.bad_mailboxes(sorted(_everyone(recipients)))

    assert 5 <= len(bad) <= 40
    assert {a: sink.handler.rcpt_attempts[a] for a in bad} == {a: 1 for a in bad}
    failed = set(
        CampaignItem.objects.filter(campaign=campaign, status=S.FAILED).values_list(
            "contact__email", flat=True
        )
    )
    assert failed == bad
    assert set(Suppression.objects.filter(source="bounce").values_list("pattern", flat=True)) == bad
    assert set(sink.per_recipient()) == _everyone(recipients) - bad


def _start_redis(port: int, log: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            str(redis_server_binary()),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), timeout=10, what="redis to start")
    return process


def _pings(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def test_a_flushed_and_restarted_broker_and_two_beats_lose_and_double_nothing(tmp_path):
    recipients = 1200
    port = free_port()
    broker = [_start_redis(port, tmp_path / "redis.log")]

    def outage_then_done() -> bool:
        if len(broker) == 1 and _sent(campaign) >= recipients // 3:
            redis.Redis(port=port).flushall()  # every queued task is gone
            stop(broker[0])
            time.sleep(1)
            broker.append(_start_redis(port, tmp_path / "redis.log"))
        return len(broker) == 2 and _completed(campaign)

    try:
        with SmtpSink() as sink:
            campaign = _campaign(sink.port, recipients, batch_size=40)
            run_until(
                outage_then_done,
                queues=[campaign.dispatcher.queue],
                env=celery_env(CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0", **FAST),
                logs=tmp_path,
                timeout=300,
                what="the broker outage and then the campaign to complete",
                beats=2,
            )
    finally:
        stop(broker[-1])

    assert sink.per_recipient() == {address: 1 for address in _everyone(recipients)}


def test_two_generate_jobs_at_once_create_each_item_once():
    recipients = 20_000
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/herald-unused")
    campaign = make_campaign(dispatcher=dispatcher, lists=[make_audience(recipients)])
    services.campaign_schedule(campaign=campaign)
    errors: list[BaseException] = []

    def generate() -> None:
        try:
            services.items_generate(page_size=1000)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=generate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert CampaignItem.objects.filter(campaign=campaign).count() == recipients
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.SENDING
