"""One campaign, end to end: scheduled in the database, driven by real
beat and a real Celery worker over Redis, delivered to a real SMTP server."""

from __future__ import annotations

import os

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from campaigns import services
from campaigns.models import Campaign, CampaignItem
from tests.helpers import make_audience, make_campaign, make_dispatcher, make_smtp_server
from tests.smtp import SmtpSink
from tests.workers import celery_env, run_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def _beat_every_second() -> None:
    every, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(task__startswith="campaigns.tasks.").update(interval=every)


def test_a_scheduled_campaign_reaches_every_recipient_once_and_completes(tmp_path):
    with SmtpSink() as sink:
        dispatcher = make_dispatcher(
            smtp_server=make_smtp_server(port=sink.port),
            server_name=f"slice{os.getpid()}",
            batch_size=20,
        )
        campaign = make_campaign(dispatcher=dispatcher, lists=[make_audience(60)])
        _beat_every_second()
        services.campaign_schedule(campaign=campaign)

        run_until(
            lambda: Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.COMPLETED,
            queues=[dispatcher.queue],
            env=celery_env(),
            logs=tmp_path,
            timeout=120,
            what="the campaign to complete",
        )

    assert sink.per_recipient() == {f"user{i}@example.org": 1 for i in range(60)}
    for received in sink.received:
        number = received.recipients[0].removeprefix("user").split("@")[0]
        assert received.message["Subject"] == f"Hello First{number}"
        assert received.message["To"] == f"First{number} Last{number} <user{number}@example.org>"
    campaign.refresh_from_db()
    assert (campaign.total_count, campaign.sent_count) == (60, 60)
    assert not CampaignItem.objects.filter(campaign=campaign).exclude(status="sent").exists()
