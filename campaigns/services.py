"""The campaign pipeline: schedule, generate items, claim batches, send
them, record every result, complete. Every step is safe to run twice at
once: rows move only by conditional updates or under row locks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from dispatchers.models import Dispatcher
from dispatchers.ratelimit import rate_budget, rate_refund, rate_spend
from dispatchers.transports import ConnectionLost, Outcome, SendResult, transport_for

from .messages import CompiledTemplate, MessageBuildError, message_build, template_compile
from .selectors import campaign_counts
from .models import Batch, Campaign, CampaignItem, Contact, Subscription, Suppression

logger = logging.getLogger(__name__)
Item = CampaignItem
S = CampaignItem.Status

# At most this many unfinished batches per dispatcher: a backlog stays in
# the database (where pausing and rate limits still apply), not in Redis.
MAX_OPEN_BATCHES = 4


# --- scheduling --------------------------------------------------------------


def campaign_schedule(*, campaign: Campaign, when: datetime | None = None) -> None:
    if campaign.status != Campaign.Status.DRAFT:
        raise ValidationError(f"Only a draft can be scheduled; this one is {campaign.status}.")
    if not campaign.lists.exists():
        raise ValidationError("Choose at least one list to send to.")
    updated = Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.DRAFT).update(
        status=Campaign.Status.SCHEDULED, scheduled_at=when or timezone.now()
    )
    if updated != 1:
        raise ValidationError("The campaign changed meanwhile; reload and try again.")


def campaign_pause(*, campaign: Campaign) -> bool:
    live = [Campaign.Status.SCHEDULED, Campaign.Status.GENERATING, Campaign.Status.SENDING]
    return Campaign.objects.filter(pk=campaign.pk, status__in=live).update(
        status=Campaign.Status.PAUSED
    ) == 1


def campaign_resume(*, campaign: Campaign) -> bool:
    """A paused campaign picks up where it stopped: generating if its
    audience was not fully paged in yet, sending otherwise."""
    if campaign.status != Campaign.Status.PAUSED:
        return False
    target = Campaign.Status.SENDING if campaign.started_at else Campaign.Status.SCHEDULED
    return Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.PAUSED).update(
        status=target
    ) == 1


# --- generate items ----------------------------------------------------------

_GENERATE_SQL = """
WITH page AS (
    SELECT c.id, c.email, c.status
    FROM {contact} c
    WHERE c.id > %(after)s
      AND EXISTS (
        SELECT 1 FROM {subscription} s
        JOIN {campaign_lists} cl ON cl.contactlist_id = s.contact_list_id
        WHERE s.contact_id = c.id AND cl.campaign_id = %(campaign)s)
    ORDER BY c.id
    LIMIT %(size)s
), verdict AS (
    SELECT p.id,
        CASE WHEN p.status <> 'active' THEN p.status
             WHEN EXISTS (
                SELECT 1 FROM {suppression} x
                WHERE x.pattern IN (lower(p.email), '*@' || split_part(lower(p.email), '@', 2)))
             THEN 'suppressed'
             ELSE '' END AS reason
    FROM page p
), inserted AS (
    INSERT INTO {item} (campaign_id, contact_id, status, skip_reason, token, attempts,
                        possibly_duplicated, smtp_response, queue_id)
    SELECT %(campaign)s, v.id,
           CASE WHEN v.reason = '' THEN 'pending' ELSE 'skipped' END,
           v.reason, md5(gen_random_uuid()::text), 0, false, '', ''
    FROM verdict v
    ON CONFLICT (campaign_id, contact_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM page), (SELECT max(id) FROM page), (SELECT count(*) FROM inserted)
"""


def _generate_sql() -> str:
    return _GENERATE_SQL.format(
        contact=Contact._meta.db_table,
        subscription=Subscription._meta.db_table,
        campaign_lists=Campaign.lists.through._meta.db_table,
        suppression=Suppression._meta.db_table,
        item=CampaignItem._meta.db_table,
    )


def items_generate_page(*, campaign_id: int, page_size: int) -> tuple[bool, int]:
    """Page one slice of the audience into items. Returns (done, inserted).

    The campaign row is locked (SKIP LOCKED) for the page, so a second
    generator running at the same time simply moves on."""
    with transaction.atomic():
        campaign = (
            Campaign.objects.select_for_update(skip_locked=True)
            .filter(
                pk=campaign_id,
                status__in=[Campaign.Status.SCHEDULED, Campaign.Status.GENERATING],
            )
            .first()
        )
        if campaign is None:
            return True, 0
        with connection.cursor() as cur:
            cur.execute(
                _generate_sql(),
                {"after": campaign.generated_through, "campaign": campaign.pk, "size": page_size},
            )
            paged, last_id, inserted = cur.fetchone()
        done = paged < page_size
        campaign.generated_through = last_id or campaign.generated_through
        campaign.status = Campaign.Status.SENDING if done else Campaign.Status.GENERATING
        campaign.started_at = campaign.started_at or timezone.now()
        campaign.save(update_fields=["generated_through", "status", "started_at", "updated_at"])
        return done, inserted


def items_generate(*, now: datetime | None = None, page_size: int | None = None) -> int:
    """Generate items for every due campaign, one page at a time."""
    now = now or timezone.now()
    page_size = page_size or settings.HERALD_ITEMS_PAGE_SIZE
    due = Campaign.objects.filter(
        Q(status=Campaign.Status.SCHEDULED, scheduled_at__lte=now)
        | Q(status=Campaign.Status.GENERATING)
    ).values_list("pk", flat=True)
    total = 0
    for campaign_id in list(due):
        done = False
        while not done:
            done, inserted = items_generate_page(campaign_id=campaign_id, page_size=page_size)
            total += inserted
    return total


# --- claim batches -----------------------------------------------------------


def _enqueue_batch(batch: Batch, queue: str) -> None:
    from .tasks import send_batch  # tasks import services; import late

    send_batch.apply_async(args=[batch.pk], queue=queue)


def batch_claim(*, dispatcher_id: int, now: datetime | None = None) -> Batch | None:
    """Reserve budget and claim up to one batch of due items.

    The dispatcher row is locked for the transaction, so the rate check
    and the spend are one step for all workers together."""
    now = now or timezone.now()
    with transaction.atomic():
        dispatcher = Dispatcher.objects.select_for_update().get(pk=dispatcher_id)
        if not dispatcher.is_enabled:
            return None
        open_batches = Batch.objects.filter(dispatcher=dispatcher, finished_at__isnull=True)
        if open_batches.count() >= MAX_OPEN_BATCHES:
            return None
        wanted = min(dispatcher.batch_size, rate_budget(dispatcher=dispatcher, now=now))
        if wanted <= 0:
            return None
        ids = list(
            CampaignItem.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(campaign__dispatcher=dispatcher, campaign__status=Campaign.Status.SENDING)
            .filter(Q(status=S.PENDING) | Q(status=S.DEFERRED, next_attempt_at__lte=now))
            .order_by("id")
            .values_list("id", flat=True)[:wanted]
        )
        if not ids:
            return None
        lease = timedelta(seconds=settings.HERALD_BATCH_LEASE_SECONDS)
        batch = Batch.objects.create(dispatcher=dispatcher, lease_expires_at=now + lease, size=len(ids))
        CampaignItem.objects.filter(id__in=ids).update(status=S.CLAIMED, batch=batch)
        rate_spend(dispatcher=dispatcher, count=len(ids), now=now)
        queue = dispatcher.queue
        transaction.on_commit(lambda: _enqueue_batch(batch, queue))
        return batch


def messages_process(*, now: datetime | None = None) -> int:
    """The process-messages job: reclaim dead batches, then claim new ones."""
    now = now or timezone.now()
    claimed = batches_reclaim(now=now)
    for dispatcher_id in Dispatcher.objects.filter(is_enabled=True).values_list("pk", flat=True):
        while (batch := batch_claim(dispatcher_id=dispatcher_id, now=now)) is not None:
            claimed += batch.size
    return claimed


# --- leases and dead workers ------------------------------------------------


@contextmanager
def _batch_lock(batch_id: int) -> Iterator[bool]:
    """A session-level advisory lock held while a batch is being sent.

    PostgreSQL drops it the instant the holder's connection dies, so "can
    I take the lock?" answers "is the worker that started this alive?"
    without waiting for the lease to run out."""
    with connection.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s, %s)", [_LOCK_SPACE, batch_id])
        got = cur.fetchone()[0]
    try:
        yield got
    finally:
        if got:
            with connection.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s, %s)", [_LOCK_SPACE, batch_id])


_LOCK_SPACE = 4242  # advisory-lock namespace of batches


def batch_release(*, batch: Batch, now: datetime) -> int:
    """Put a batch's unfinished items back to pending and close the batch.

    Items whose message was on the wire when it stopped may have been
    delivered: they go back flagged as possibly duplicated."""
    with transaction.atomic():
        claimed = CampaignItem.objects.filter(batch=batch, status=S.CLAIMED)
        claimed.filter(sending_started_at__isnull=False).update(possibly_duplicated=True)
        released = claimed.update(status=S.PENDING, batch=None, sending_started_at=None)
        closed = Batch.objects.filter(pk=batch.pk, finished_at__isnull=True).update(finished_at=now)
        if closed:
            rate_refund(dispatcher_id=batch.dispatcher_id, count=released, spent_at=batch.created_at)
    return released


def batches_reclaim(*, now: datetime) -> int:
    """Release batches whose worker is gone: started ones whose advisory
    lock is free, and any whose lease ran out (lost in the broker)."""
    released = 0
    for batch in Batch.objects.filter(finished_at__isnull=True).order_by("pk"):
        if batch.started_at is None and batch.lease_expires_at > now:
            continue  # still waiting in the queue
        with _batch_lock(batch.pk) as free:
            if free:
                batch.refresh_from_db()
                if batch.finished_at is None:
                    released += batch_release(batch=batch, now=now)
    return released


# --- send one batch ----------------------------------------------------------


def _retry_delay(attempts: int) -> timedelta:
    first = settings.HERALD_RETRY_FIRST_SECONDS
    return timedelta(seconds=min(first * 2 ** max(attempts - 1, 0), settings.HERALD_RETRY_MAX_SECONDS))


def item_record_result(*, item: CampaignItem, result: SendResult, now: datetime) -> str:
    """Write one item's verdict; returns the status it ended in."""
    mine = CampaignItem.objects.filter(pk=item.pk, status=S.CLAIMED, batch_id=item.batch_id)
    common = {
        "attempts": F("attempts") + 1,
        "sending_started_at": None,
        "smtp_code": result.code,
        "smtp_response": result.text[:500],
    }
    first_attempt = item.first_attempt_at or now
    if result.outcome is Outcome.ACCEPTED:
        status = S.SENT
        mine.update(status=status, sent_at=now, queue_id=result.queue_id[:100], **common)
    elif result.outcome is Outcome.TRANSIENT and (
        now - first_attempt < timedelta(seconds=settings.HERALD_RETRY_GIVE_UP_SECONDS)
    ):
        status = S.DEFERRED
        mine.update(
            status=status,
            batch=None,
            first_attempt_at=first_attempt,
            next_attempt_at=now + _retry_delay(item.attempts + 1),
            **common,
        )
    else:
        status = S.FAILED
        mine.update(status=status, first_attempt_at=first_attempt, **common)
        if result.enhanced.startswith("5.1."):
            suppression_add(
                pattern=item.contact.email, source=Suppression.Source.BOUNCE, reason=result.text
            )
    return status


def suppression_add(*, pattern: str, source: str, reason: str = "") -> None:
    Suppression.objects.get_or_create(
        pattern=pattern.strip().lower(), defaults={"source": source, "reason": reason[:255]}
    )


def _is_suppressed(contact: Contact) -> str:
    if contact.status != Contact.Status.ACTIVE:
        return contact.status
    domain = contact.email.rpartition("@")[2]
    if Suppression.objects.filter(pattern__in=[contact.email, f"*@{domain}"]).exists():
        return "suppressed"
    return ""


def _item_skip(item: CampaignItem, reason: str) -> None:
    CampaignItem.objects.filter(pk=item.pk, status=S.CLAIMED, batch_id=item.batch_id).update(
        status=S.SKIPPED, skip_reason=reason, sending_started_at=None
    )


def _item_fail(item: CampaignItem, reason: str, now: datetime) -> None:
    CampaignItem.objects.filter(pk=item.pk, status=S.CLAIMED, batch_id=item.batch_id).update(
        status=S.FAILED, smtp_response=reason[:500], sending_started_at=None, first_attempt_at=now
    )


def _synchronous_commit(on: bool) -> None:
    # Results are committed one by one without waiting for the WAL flush:
    # a dead worker loses nothing; only a PostgreSQL crash could lose the
    # last fraction of a second of results (see DESIGN.md, the pipeline).
    with connection.cursor() as cur:
        cur.execute(f"SET synchronous_commit TO {'on' if on else 'off'}")


def batch_send(*, batch_id: int) -> int:
    """The outbound job for one batch. Returns how many items it settled."""
    with _batch_lock(batch_id) as mine:
        if not mine:
            return 0  # another worker is sending this batch right now
        batch = Batch.objects.select_related("dispatcher__smtp_server").get(pk=batch_id)
        if batch.finished_at is not None:
            return 0  # a redelivered task for a batch already done
        now = timezone.now()
        lease = timedelta(seconds=settings.HERALD_BATCH_LEASE_SECONDS)
        Batch.objects.filter(pk=batch_id).update(started_at=now, lease_expires_at=now + lease)
        _synchronous_commit(False)
        try:
            settled = _batch_send_items(batch)
        finally:
            _synchronous_commit(True)
        if settled is None:
            # The server failed: give the unsent rest back for the next claim.
            batch_release(batch=batch, now=timezone.now())
            return 0
        Batch.objects.filter(pk=batch_id, finished_at__isnull=True).update(finished_at=timezone.now())
        return settled


def _batch_send_items(batch: Batch) -> int | None:
    """Send every claimed item of the batch; None when the server failed."""
    dispatcher = batch.dispatcher
    items = (
        CampaignItem.objects.filter(batch=batch, status=S.CLAIMED)
        .select_related("contact", "campaign__template")
        .order_by("id")
    )
    compiled: dict[int, CompiledTemplate] = {}
    settled = 0
    try:
        transport = transport_for(dispatcher)
        transport.open()
    except ConnectionLost as exc:
        logger.warning("dispatcher %s: cannot connect: %s", dispatcher, exc)
        return None
    try:
        for item in items:
            campaign = item.campaign
            if campaign.status != Campaign.Status.SENDING:
                continue  # paused or cancelled: left claimed, released below
            reason = _is_suppressed(item.contact)
            if reason:
                _item_skip(item, reason)
                settled += 1
                continue
            if campaign.template_id not in compiled:
                compiled[campaign.template_id] = template_compile(template=campaign.template)
            try:
                message = message_build(
                    compiled=compiled[campaign.template_id],
                    item=item,
                    contact=item.contact,
                    campaign=campaign,
                    dispatcher=dispatcher,
                )
            except MessageBuildError as exc:
                _item_fail(item, str(exc), timezone.now())
                settled += 1
                continue
            CampaignItem.objects.filter(pk=item.pk).update(sending_started_at=timezone.now())
            try:
                result = transport.send(message, sender=dispatcher.from_email, recipient=item.contact.email)
            except ConnectionLost as exc:
                logger.warning("dispatcher %s: connection lost: %s", dispatcher, exc)
                if not exc.maybe_delivered:
                    CampaignItem.objects.filter(pk=item.pk).update(sending_started_at=None)
                return None
            item_record_result(item=item, result=result, now=timezone.now())
            settled += 1
    finally:
        transport.close()
    # Items left claimed (their campaign was paused meanwhile) go back.
    if CampaignItem.objects.filter(batch=batch, status=S.CLAIMED).exists():
        batch_release(batch=batch, now=timezone.now())
    return settled


# --- complete ----------------------------------------------------------------


def campaigns_complete(*, now: datetime | None = None) -> int:
    """Close sending campaigns with no live item left; freeze counters."""
    now = now or timezone.now()
    live = CampaignItem.objects.filter(campaign=OuterRef("pk"), status__in=CampaignItem.LIVE)
    done = 0
    for campaign in Campaign.objects.filter(status=Campaign.Status.SENDING).exclude(Exists(live)):
        counts = campaign_counts(campaign_id=campaign.pk)
        done += Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.SENDING).exclude(
            Exists(live)
        ).update(
            status=Campaign.Status.COMPLETED,
            completed_at=now,
            total_count=sum(counts.values()),
            sent_count=counts.get(S.SENT, 0),
            failed_count=counts.get(S.FAILED, 0) + counts.get(S.BOUNCED, 0),
            skipped_count=counts.get(S.SKIPPED, 0),
        )
    return done




# --- unsubscribe -------------------------------------------------------------


def contact_unsubscribe(*, token: str, source: str) -> str | None:
    """Unsubscribe the contact an item was sent to; returns its address."""
    item = CampaignItem.objects.select_related("contact").filter(token=token).first()
    if item is None:
        return None
    contact = item.contact
    Contact.objects.filter(pk=contact.pk).update(
        status=Contact.Status.UNSUBSCRIBED, source=contact.source or f"unsubscribe:{source}"
    )
    return contact.email
