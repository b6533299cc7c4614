"""The per-dispatcher panel, pause and resume from the job manager, and
the workers panel."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.roles import ADMINISTRATOR, MARKETER, OPERATOR
from campaigns.models import Batch, Campaign, CampaignItem, Contact
from campaigns.services import batch_claim
from dispatchers.models import Dispatcher, RateUsage
from jobs.models import JobAction, Notification
from jobs.selectors import dispatchers_panel, workers_alive
from tests.helpers import make_campaign, make_dispatcher, make_template

from .conftest import Login

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


def items(campaign: Campaign, *statuses: str, **extra: object) -> list[CampaignItem]:
    start = Contact.objects.count()
    contacts = Contact.objects.bulk_create(
        Contact(email=f"c{start + i}@example.org") for i in range(len(statuses))
    )
    return CampaignItem.objects.bulk_create(
        CampaignItem(campaign=campaign, contact=c, status=s, **extra)
        for c, s in zip(contacts, statuses, strict=True)
    )


@pytest.fixture
def busy_dispatcher() -> Dispatcher:
    """A dispatcher mid-campaign: 3 pending, 2 deferred due, 1 deferred
    later, 1 claimed in an open batch, 4 sent; a paused campaign's pending
    items do not count."""
    dispatcher = make_dispatcher(messages_per_hour=200, server_name="mailer7")
    now = timezone.now()
    sending = make_campaign(dispatcher=dispatcher, lists=[], status=Campaign.Status.SENDING)
    items(sending, S.PENDING, S.PENDING, S.PENDING, S.SENT, S.SENT, S.SENT, S.SENT)
    items(sending, S.DEFERRED, S.DEFERRED, next_attempt_at=now - timedelta(minutes=1))
    items(sending, S.DEFERRED, next_attempt_at=now + timedelta(hours=1))
    batch = Batch.objects.create(dispatcher=dispatcher, lease_expires_at=now, size=1)
    items(sending, S.CLAIMED, batch=batch)
    paused = make_campaign(
        dispatcher=dispatcher, lists=[], template=make_template(), status=Campaign.Status.PAUSED
    )
    items(paused, S.PENDING, S.PENDING)
    minute = now.replace(second=0, microsecond=0)
    RateUsage.objects.bulk_create(
        [
            RateUsage(dispatcher=dispatcher, minute=minute - timedelta(minutes=2), count=10),
            RateUsage(dispatcher=dispatcher, minute=minute - timedelta(minutes=30), count=20),
            RateUsage(dispatcher=dispatcher, minute=minute - timedelta(hours=2), count=100),
        ]
    )
    Dispatcher.objects.filter(pk=dispatcher.pk).update(
        last_error="SMTP 421 too many connections", consecutive_failures=2
    )
    return dispatcher


def test_the_panel_counts_each_dispatcher(busy_dispatcher: Dispatcher) -> None:
    idle = make_dispatcher(name="Idle")

    panels = {p.dispatcher.pk: p for p in dispatchers_panel()}

    busy = panels[busy_dispatcher.pk]
    assert (busy.backlog, busy.deferred) == (5, 3)
    assert (busy.batches_in_flight, busy.items_in_flight) == (1, 1)
    assert (busy.used_last_hour, busy.limit, busy.percent) == (30, 200, 15)
    assert busy.rate_per_minute == 2.0  # 10 in the last five minutes
    quiet = panels[idle.pk]
    assert (quiet.backlog, quiet.deferred, quiet.batches_in_flight, quiet.used_last_hour) == (
        0,
        0,
        0,
        0,
    )


def test_the_panel_takes_a_bounded_number_of_queries(
    busy_dispatcher: Dispatcher, django_assert_max_num_queries
) -> None:
    # One query per figure, however many dispatchers and items there are.
    for n in range(5):
        make_dispatcher(name=f"Extra {n}")
    with django_assert_max_num_queries(6):
        dispatchers_panel()


def test_the_page_shows_the_dispatcher_figures(busy_dispatcher: Dispatcher, login: Login) -> None:
    html = login(OPERATOR).get(reverse("jobs:manager")).content.decode()
    row = html[html.index(f'id="dispatcher-{busy_dispatcher.pk}"') :]
    row = row[: row.index("</tr>")]
    assert '<td class="num" data-figure="backlog">5</td>' in row
    assert '<td class="num" data-figure="deferred">3</td>' in row
    assert "30 / 200" in row and "width: 15%" in row
    assert "SMTP 421 too many connections" in row
    assert "2 failed connections in a row" in row
    assert 'name="reason"' in row  # the pause form


def test_an_operator_pauses_and_resumes_a_dispatcher(
    busy_dispatcher: Dispatcher, login: Login
) -> None:
    client = login(OPERATOR)
    pause = reverse("jobs:dispatcher_pause", args=[busy_dispatcher.pk])
    resume = reverse("jobs:dispatcher_resume", args=[busy_dispatcher.pk])

    assert client.post(pause, {"reason": "Relay maintenance"}).status_code == 302
    busy_dispatcher.refresh_from_db()
    assert (busy_dispatcher.is_enabled, busy_dispatcher.paused_reason) == (
        False,
        "Relay maintenance",
    )
    assert batch_claim(dispatcher_id=busy_dispatcher.pk) is None  # the next claim sees it
    html = client.get(reverse("jobs:manager")).content.decode()
    assert "Relay maintenance" in html and "Resume" in html

    Notification.objects.create(key=f"dispatcher:{busy_dispatcher.pk}:paused", title="paused")
    assert client.post(resume).status_code == 302
    busy_dispatcher.refresh_from_db()
    assert busy_dispatcher.is_enabled and busy_dispatcher.paused_reason == ""
    assert not Notification.objects.filter(resolved_at__isnull=True).exists()
    assert batch_claim(dispatcher_id=busy_dispatcher.pk).size == 5

    audit = list(JobAction.objects.order_by("at").values_list("username", "action", "detail"))
    assert audit == [
        ("operator", JobAction.Action.PAUSE_DISPATCHER, "Relay maintenance"),
        ("operator", JobAction.Action.RESUME_DISPATCHER, "was paused: Relay maintenance"),
    ]


def test_a_pause_without_a_reason_says_who_paused(login: Login) -> None:
    dispatcher = make_dispatcher()
    login(ADMINISTRATOR).post(reverse("jobs:dispatcher_pause", args=[dispatcher.pk]))
    dispatcher.refresh_from_db()
    assert dispatcher.paused_reason == "Paused by administrator from the job manager"


def test_a_too_long_reason_is_refused(login: Login) -> None:
    dispatcher = make_dispatcher()
    response = login(OPERATOR).post(
        reverse("jobs:dispatcher_pause", args=[dispatcher.pk]), {"reason": "x" * 300}
    )
    assert response.status_code == 400
    assert "the reason is too long" in response.content.decode()
    dispatcher.refresh_from_db()
    assert dispatcher.is_enabled and not JobAction.objects.exists()


def test_a_marketer_cannot_pause_a_dispatcher(login: Login) -> None:
    dispatcher = make_dispatcher()
    response = login(MARKETER).post(reverse("jobs:dispatcher_pause", args=[dispatcher.pk]))
    assert response.status_code == 403
    dispatcher.refresh_from_db()
    assert dispatcher.is_enabled and not JobAction.objects.exists()


def test_pausing_an_unknown_dispatcher_is_not_found(login: Login) -> None:
    assert login(OPERATOR).post(reverse("jobs:dispatcher_pause", args=[999999])).status_code == 404


# --- workers -----------------------------------------------------------------


def test_workers_are_unknown_when_the_broker_is_down(settings) -> None:
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    workers = workers_alive(timeout=0.3, max_age=0)
    assert not workers.known
    assert "Connection refused" in workers.error or "in time" in workers.error


def test_the_page_says_unknown_when_the_broker_is_down(settings, login: Login) -> None:
    make_dispatcher(server_name="mailer9")
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    settings.HERALD_WORKERS_MAX_AGE = 0
    response = login(OPERATOR).get(reverse("jobs:manager"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Workers: <strong>unknown</strong>" in html
    assert "no worker for server" not in html


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_live_worker_is_listed_and_a_stopped_one_is_gone(settings, tmp_path) -> None:
    from django.test import Client

    from accounts.services import user_create
    from tests.workers import celery_env, start_worker, stop, wait_for

    settings.HERALD_WORKERS_MAX_AGE = 0
    settings.HERALD_WORKERS_TIMEOUT = 1.0
    served = make_dispatcher(server_name=f"served{os.getpid()}")
    orphan = make_dispatcher(server_name=f"orphan{os.getpid()}")
    log = tmp_path / f"jobsworker{os.getpid()}.log"
    seen: list = []

    def mine() -> list:
        seen[:] = [
            w for w in workers_alive(timeout=1.0, max_age=0).workers if served.queue in w.queues
        ]
        return seen

    worker = start_worker([served.queue], log, celery_env(), concurrency=1)
    try:
        wait_for(lambda: bool(mine()), timeout=30, what="the worker to answer", logs=[log])
        (listed,) = seen
        assert listed.name == f"testjobsworker{os.getpid()}@{listed.host}"
        assert listed.queues == [served.queue]
        client = Client()
        client.force_login(
            user_create(
                username="op", email="op@herald.test", password="pw-Herald-1", role=OPERATOR
            )
        )
        html = client.get(reverse("jobs:manager")).content.decode()
        assert listed.name in html
        assert f"no worker for server {orphan.server_name}" in html
        assert f"no worker for server {served.server_name}" not in html
    finally:
        stop(worker)
    wait_for(lambda: not mine(), timeout=10, what="the stopped worker to be gone")
    html = client.get(reverse("jobs:manager")).content.decode()
    assert f"no worker for server {served.server_name}" in html
