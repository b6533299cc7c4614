"""The campaign pipeline: schedule, generate items, claim batches, send
them, record every result, complete. Every step is safe to run twice at
once: rows move only by conditional updates or under row locks."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import (
    BooleanField,
    Exists,
    F,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
)
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.utils import timezone

from dispatchers.mailbox_providers import known_provider_sql, mail_domains_resolve
from dispatchers.models import Dispatcher, MailDomain, ProviderRate
from dispatchers.pool import Completion, SendPool, SmtpSendPool, send_pool_for
from dispatchers.ratelimit import (
    rate_budget,
    rate_clock,
    rate_refund,
    rate_spend,
    rate_usage_prune,
)
from dispatchers.services import dispatcher_pause, pool_member_fail, pool_member_record_failover
from dispatchers.signing import signer_for
from dispatchers.throttle import (
    ProviderPlan,
    configured_rate,
    provider_plan,
    provider_rates,
    provider_throttle_record,
    provider_usage_prune,
    provider_usage_spend,
)
from dispatchers.transports import ConnectionLost, Outcome, SendResult
from dispatchers.transports.base import WireMessage
from jobs.locks import BATCHES, advisory_lock
from jobs.services import job_runs_prune, notification_raise, notification_resolve

from .audience import audience_page_sql, autoresponder_page_sql, campaign_has_rules
from .messages import (
    MessageBuildError,
    MessageSkeleton,
    Recipient,
    SendingItem,
    bounce_domain,
    message_render,
    message_skeleton,
    template_compile,
    verp_address,
)
from .models import (
    Batch,
    Campaign,
    CampaignItem,
    CampaignStatusCount,
    Contact,
    MarketingConfiguration,
    Subscription,
    Suppression,
)
from .selectors import campaign_counts, campaigns_sent_through, status_counts

logger = logging.getLogger(__name__)
S = CampaignItem.Status

# At most this many unfinished batches per dispatcher: a backlog stays in
# the database (where pausing and rate limits still apply), not in Redis.
MAX_OPEN_BATCHES = 4


# --- scheduling --------------------------------------------------------------


def campaign_schedule(*, campaign: Campaign, when: datetime | None = None) -> None:
    if campaign.status != Campaign.Status.DRAFT:
        raise ValidationError(f"Only a draft can be scheduled; this one is {campaign.status}.")
    if not (campaign.lists.exists() or campaign.segments.exists()):
        raise ValidationError("Choose at least one list or segment to send to.")
    when = when or timezone.now()
    if campaign.kind == Campaign.Kind.AUTORESPONDER:
        # An autoresponder has no audience to page in: it answers those who
        # subscribe from now on, so it starts "sending" straight away.
        fields = {"status": Campaign.Status.SENDING, "scheduled_at": when, "started_at": when}
    else:
        fields = {"status": Campaign.Status.SCHEDULED, "scheduled_at": when}
    updated = Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.DRAFT).update(**fields)
    if updated != 1:
        raise ValidationError("The campaign changed meanwhile; reload and try again.")


def campaign_pause(*, campaign: Campaign, reason: str = "") -> bool:
    live = [Campaign.Status.SCHEDULED, Campaign.Status.GENERATING, Campaign.Status.SENDING]
    return (
        Campaign.objects.filter(pk=campaign.pk, status__in=live).update(
            status=Campaign.Status.PAUSED, paused_reason=reason[:255]
        )
        == 1
    )


def campaign_resume(*, campaign: Campaign) -> bool:
    """A paused campaign picks up where it stopped: still to start, part way
    through paging in its audience, or sending."""
    if campaign.status != Campaign.Status.PAUSED:
        return False
    if campaign.audience_complete or campaign.kind == Campaign.Kind.AUTORESPONDER:
        target = Campaign.Status.SENDING
    elif campaign.started_at:
        target = Campaign.Status.GENERATING
    else:
        target = Campaign.Status.SCHEDULED
    resumed = Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.PAUSED).update(
        status=target, paused_reason="", consecutive_errors=0
    )
    if resumed:
        notification_resolve(key=f"campaign:{campaign.pk}:paused")
    return resumed == 1


def campaign_duplicate(*, campaign: Campaign, user: AbstractBaseUser) -> Campaign:
    """A draft with the same name (marked as a copy), template, dispatcher
    and lists; nothing of the original's sending comes along."""
    with transaction.atomic():
        copy = Campaign.objects.create(
            name=f"{campaign.name} (copy)"[:200],
            kind=campaign.kind,
            autoresponder_delay=campaign.autoresponder_delay,
            trigger=campaign.trigger,
            date_attribute=campaign.date_attribute,
            date_offset_days=campaign.date_offset_days,
            only_segment=campaign.only_segment,
            send_limit=campaign.send_limit,
            template=campaign.template,
            dispatcher=campaign.dispatcher,
            created_by=user,
        )
        copy.lists.set(campaign.lists.all())
        copy.segments.set(campaign.segments.all())
        copy.exclude_lists.set(campaign.exclude_lists.all())
        copy.exclude_segments.set(campaign.exclude_segments.all())
    return copy


# --- generate items ----------------------------------------------------------

# The audience page differs between a campaign (everyone on its lists, by
# contact id) and an autoresponder (contacts whose trigger is due,
# campaigns/audience.py); what happens to the page is shared: each contact
# gets an item, pending or skipped with its reason, and a rerun inserts
# nothing twice. A subscription with unsubscribed_at is the record of
# someone who left the list.

# The next page of a campaign's lists: from each list, its first members
# after the cursor, read in contact order from an index and cut at the
# page size, then the first of those. A contact among the page's
# first N is among the first N of each list it is on, so nothing is
# skipped; and a page reads at most N subscriptions a list, wherever the
# cursor is. (As "contact after the cursor and on one of the lists",
# PostgreSQL joined every remaining subscription, then sorted: 0.8 s for
# the first page of 5,000 at 300,000 contacts, ever less as the cursor
# moved on, three to four times a plain INSERT ... SELECT in all. Now the
# page is found in about 20 ms wherever it starts.)
_CAMPAIGN_PAGE = """
    SELECT c.id, c.email, c.status
    FROM (
        SELECT DISTINCT first.contact_id
        FROM {campaign_lists} cl
        CROSS JOIN LATERAL (
            SELECT s.contact_id FROM {subscription} s
            WHERE s.contact_list_id = cl.contactlist_id AND s.contact_id > %(after)s
              AND s.unsubscribed_at IS NULL
            ORDER BY s.contact_id
            LIMIT %(size)s
        ) first
        WHERE cl.campaign_id = %(campaign)s
        ORDER BY first.contact_id
        LIMIT %(size)s
    ) p
    -- Each contact by its key (LIMIT 1 keeps the planner from hashing the
    -- whole contacts table instead, for one page of it).
    CROSS JOIN LATERAL (
        SELECT c.id, c.email, c.status FROM {contact} c WHERE c.id = p.contact_id LIMIT 1
    ) c
    ORDER BY c.id
"""

_ITEMS_FROM_PAGE = """
WITH page AS ({page}), verdict AS (
    SELECT p.id, split_part(lower(p.email), '@', 2) AS domain,
        CASE WHEN p.status <> 'active' THEN p.status
             WHEN EXISTS (
                SELECT 1 FROM {suppression} x
                WHERE x.pattern IN (lower(p.email), '*@' || split_part(lower(p.email), '@', 2)))
             THEN 'suppressed'
             ELSE '' END AS reason
    FROM page p
), grouped AS (
    -- The recipient's mailbox provider: a well-known domain's, else what
    -- its last MX look-up found, else the domain is its own group.
    SELECT v.*, md.domain IS NULL OR md.resolved_at < now() - interval '{mx_ttl} hours'
                OR (md.error <> '' AND md.resolved_at < now() - interval '1 hour') AS stale,
           COALESCE(NULLIF(v.known, ''), NULLIF(md.provider, ''), v.domain) AS provider_group
    FROM (SELECT verdict.*, {known} AS known FROM verdict) v
    LEFT JOIN {mail_domain} md ON md.domain = v.domain
), inserted AS (
    INSERT INTO {item} (campaign_id, contact_id, status, skip_reason, token, attempts,
                        possibly_duplicated, smtp_response, queue_id, provider_group)
    SELECT %(campaign)s, g.id,
           CASE WHEN g.reason = '' THEN 'pending' ELSE 'skipped' END,
           g.reason, md5(gen_random_uuid()::text), 0, false, '', '', g.provider_group
    FROM grouped g
    ON CONFLICT (campaign_id, contact_id) DO NOTHING
    RETURNING id
)
SELECT (SELECT count(*) FROM page), (SELECT max(id) FROM page), (SELECT count(*) FROM inserted),
       (SELECT min(id) FROM inserted), (SELECT max(id) FROM inserted),
       (SELECT array_agg(DISTINCT g.domain) FROM grouped g
        WHERE g.stale AND g.reason = '' AND g.known = '')
"""


def _items_sql(page: str) -> str:
    tables = {
        "contact": Contact._meta.db_table,
        "subscription": Subscription._meta.db_table,
        "campaign_lists": Campaign.lists.through._meta.db_table,
        "suppression": Suppression._meta.db_table,
        "item": CampaignItem._meta.db_table,
    }
    return _ITEMS_FROM_PAGE.format(
        page=page.format(**tables),
        mail_domain=MailDomain._meta.db_table,
        known=known_provider_sql("verdict.domain"),
        mx_ttl=int(settings.HERALD_PROVIDER_MX_TTL_HOURS),
        **tables,
    )


@dataclass(frozen=True)
class _Page:
    paged: int  # contacts in the page
    last_id: int | None  # the page's last contact id
    inserted: int  # items inserted
    first_item: int | None  # the range of the inserted items' ids
    last_item: int | None
    unknown_domains: list[str] | None  # domains whose provider is to be looked up


def _items_insert(page: str, params: dict[str, object]) -> _Page:
    """Run one page of an audience into items."""
    with connection.cursor() as cur:
        cur.execute(_items_sql(page), params)
        return _Page(*cur.fetchone())


def _items_insert_query(campaign: Campaign, page: str, params: list[object]) -> _Page:
    """A page built by campaigns/audience.py (with positional parameters, so
    the rest of the statement takes the campaign id positionally too)."""
    # Name the columns whatever aliases the ORM chose for them.
    page = f"SELECT * FROM ({page}) AS a (id, email, status)"
    sql = _items_sql("__PAGE__").replace("%(campaign)s", "%s").replace("__PAGE__", page)
    with connection.cursor() as cur:
        cur.execute(sql, [*params, campaign.pk])
        return _Page(*cur.fetchone())


def items_group_by_mx(*, campaign_id: int, page: _Page) -> int:
    """Look up the MX of a generated page's unknown recipient domains
    (only when some dispatcher throttles per provider), and move the
    page's items of domains hosted by Google, Microsoft, ... into that
    provider's group. After the page is committed: a claim that takes an
    item first counts it against its domain, which holds nothing back."""
    if not page.unknown_domains or page.first_item is None or not ProviderRate.objects.exists():
        return 0
    found = mail_domains_resolve(domains=page.unknown_domains)
    if not found:
        return 0
    values = ", ".join(["(%s, %s)"] * len(found))
    params: list[object] = [x for pair in found.items() for x in pair]
    sql = f"""
        UPDATE {CampaignItem._meta.db_table} AS i
        SET provider_group = COALESCE(NULLIF(m.provider, ''), m.domain)
        FROM {Contact._meta.db_table} AS c, (VALUES {values}) AS m(domain, provider)
        WHERE i.campaign_id = %s AND i.id BETWEEN %s AND %s
          AND i.status IN ('{S.PENDING.value}', '{S.DEFERRED.value}')
          AND c.id = i.contact_id AND split_part(lower(c.email), '@', 2) = m.domain
          AND i.provider_group <> COALESCE(NULLIF(m.provider, ''), m.domain)
    """
    with connection.cursor() as cur:
        cur.execute(sql, [*params, campaign_id, page.first_item, page.last_item])
        return cur.rowcount


def _items_insert_audience(campaign: Campaign, page_size: int) -> _Page:
    """A page of an audience with segments or exclusions."""
    page, params = audience_page_sql(
        campaign=campaign, after=campaign.generated_through, size=page_size
    )
    return _items_insert_query(campaign, page, params)


def items_generate_page(*, campaign_id: int, page_size: int) -> tuple[bool, int]:
    """Page one slice of the audience into items. Returns (done, inserted).

    The campaign row is locked (SKIP LOCKED) for the page, so a second
    generator running at the same time simply moves on."""
    done, page = _items_generate_page(campaign_id=campaign_id, page_size=page_size)
    if page is None:
        return done, 0
    items_group_by_mx(campaign_id=campaign_id, page=page)
    return done, page.inserted


def _send_room(campaign: Campaign) -> int:
    """How many more recipients the campaign's send limit lets in. Items
    skipped (suppressed, unsubscribed) do not count: a page never holds
    more contacts than there is room for, so the limit is never passed."""
    if campaign.send_limit is None:
        return sys.maxsize
    taken = (
        CampaignStatusCount.objects.filter(campaign_id=campaign.pk)
        .exclude(status=S.SKIPPED)
        .aggregate(n=Sum("count"))["n"]
    )
    return max(campaign.send_limit - (taken or 0), 0)


def _items_generate_page(*, campaign_id: int, page_size: int) -> tuple[bool, _Page | None]:
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
            return True, None
        page_size = min(page_size, _send_room(campaign))
        page = None
        if page_size == 0:
            done = True  # the send limit is reached: the rest of the audience is left out
        else:
            if campaign_has_rules(campaign):
                page = _items_insert_audience(campaign, page_size)
            else:
                page = _items_insert(
                    _CAMPAIGN_PAGE,
                    {
                        "after": campaign.generated_through,
                        "campaign": campaign.pk,
                        "size": page_size,
                    },
                )
            done = page.paged < page_size
            campaign.generated_through = page.last_id or campaign.generated_through
        campaign.status = Campaign.Status.SENDING if done else Campaign.Status.GENERATING
        campaign.audience_complete = done
        campaign.started_at = campaign.started_at or timezone.now()
        campaign.save(
            update_fields=[
                "generated_through",
                "status",
                "audience_complete",
                "started_at",
                "updated_at",
            ]
        )
        return done, page


def items_generate(*, now: datetime | None = None, page_size: int | None = None) -> int:
    """Generate items for every due campaign, one page at a time."""
    now = now or timezone.now()
    page_size = page_size or settings.HERALD_ITEMS_PAGE_SIZE
    due = Campaign.objects.filter(
        Q(status=Campaign.Status.SCHEDULED, scheduled_at__lte=now)
        | Q(status=Campaign.Status.GENERATING),
        kind=Campaign.Kind.REGULAR,
    ).values_list("pk", flat=True)
    total = 0
    for campaign_id in list(due):
        done = False
        while not done:
            done, inserted = items_generate_page(campaign_id=campaign_id, page_size=page_size)
            total += inserted
    return total


def autoresponders_process(*, now: datetime | None = None, page_size: int | None = None) -> int:
    """Create the items of autoresponders whose trigger is due: contacts who
    subscribed to one of the lists after the autoresponder started, once
    its delay has passed, or whose date attribute (plus the offset) has come
    round since it started; limited to its only-segment when it has one.
    Set-based, page by page, safe to run twice."""
    now = now or timezone.now()
    page_size = page_size or settings.HERALD_ITEMS_PAGE_SIZE
    total = 0
    autoresponders = Campaign.objects.filter(
        kind=Campaign.Kind.AUTORESPONDER, status=Campaign.Status.SENDING
    )
    for campaign in autoresponders:
        while True:
            page, params = autoresponder_page_sql(campaign=campaign, now=now, size=page_size)
            found = _items_insert_query(campaign, page, params)
            items_group_by_mx(campaign_id=campaign.pk, page=found)
            total += found.inserted
            if found.paged < page_size or not found.inserted:
                break
    return total


# --- claim batches -----------------------------------------------------------


def _enqueue_batch(batch: Batch, queue: str) -> None:
    from .tasks import send_batch  # tasks import services; import late

    send_batch.apply_async(args=[batch.pk], queue=queue)


# Where this process's last claim for each dispatcher ended: the next claim
# starts after it (a keyset cursor) instead of walking again past the index
# entries of items it already claimed, which pile up until autovacuum runs
# (measured: 17,000 items/s, sagging, against 84,000+). Whenever the rest
# runs short, and every CLAIM_SWEEP_EVERY claims, a claim starts from the
# beginning, so items that became due behind the cursor (deferred retries,
# batches put back) wait at most that many claims. A hint only: any
# process may claim any item, and a stale cursor costs a sweep, not an item.
CLAIM_SWEEP_EVERY = 10

# Claims go in (campaign, item id) order, the order of item_due_idx. The
# cursor is compared as a row, "(campaign_id, id) > (c, n)": PostgreSQL can
# only answer that from item_due_idx, whose entries for items already sent
# are dead and soon skipped unread. Given "id > n" alone it would walk the
# primary key instead, past every item already sent (it assumes pending
# items are spread evenly, when they all lie at the end): 300 ms a claim at
# 250,000 sent, ever slower as a campaign drains.
Key = tuple[int, int]  # (campaign id, item id)
START: Key = (0, 0)
_claim_cursors: dict[int, tuple[Key, int]] = {}  # dispatcher id -> (last key, claims since sweep)


def _of_campaigns(campaigns: list[int]) -> RawSQL:
    # "= ANY(array)", not IN: IN of one campaign becomes "campaign_id = n",
    # and with statistics still from before the campaign drained (autovacuum
    # lags a fast send) the planner orders by the primary key again.
    table = CampaignItem._meta.db_table
    return RawSQL(
        f'"{table}"."campaign_id" = ANY(%s::bigint[])', (campaigns,), output_field=BooleanField()
    )


def _beyond(key: Key, *, behind: bool = False) -> RawSQL:
    table = CampaignItem._meta.db_table
    op = "<=" if behind else ">"
    return RawSQL(
        f'("{table}"."campaign_id", "{table}"."id") {op} (%s, %s)', key, output_field=BooleanField()
    )


def _due_ids(
    *,
    dispatcher: Dispatcher,
    campaigns: list[int],
    wanted: int,
    now: datetime,
    plan: ProviderPlan | None = None,
    into: Batch | None = None,
) -> list[int]:
    """Due items of the campaigns, in claim order, locked until commit;
    with ``into``, marked as that batch's in the same statement."""
    dispatcher_id = dispatcher.pk
    due = (
        CampaignItem.objects.select_for_update(skip_locked=True, of=("self",))
        .filter(_of_campaigns(campaigns), status__in=(S.PENDING, S.DEFERRED))
        .filter(Q(status=S.PENDING) | Q(next_attempt_at__lte=now))
        .order_by("campaign_id", "id")
    )
    if plan is not None:
        take: Callable[[QuerySet[CampaignItem], int], list[Key]] = partial(
            _take_within_provider_rates, plan=plan
        )
    elif into is not None:
        take = partial(_take_marking, batch=into)
    else:
        take = _take
    after, since_sweep = _claim_cursors.get(dispatcher_id, (START, 0))
    if since_sweep >= CLAIM_SWEEP_EVERY:
        after = START
    keys = take(due.filter(_beyond(after)), wanted)
    if len(keys) == wanted:
        _claim_cursors[dispatcher_id] = (keys[-1], since_sweep + 1 if after != START else 1)
        return [item_id for _, item_id in keys]
    # The end: sweep what lies behind the cursor, and start over next time.
    if after != START:
        keys += take(due.filter(_beyond(after, behind=True)), wanted - len(keys))
    _claim_cursors[dispatcher_id] = (START, 0)
    return [item_id for _, item_id in keys]


# Dispatcher id -> (minute, groups out of budget) of a claim that found
# nothing but items of those groups. Until the minute ends or a group gets
# budget back, the next claims of this process skip the query: it would
# walk past every one of those items again (half a million of them, when
# Gmail's share of a big campaign waits for its next minute). Items of
# other groups that become due meanwhile wait at most that minute.
_nothing_but_held: dict[int, tuple[datetime, tuple[str, ...]]] = {}


def _held_back(
    dispatcher: Dispatcher, plan: ProviderPlan | None
) -> tuple[datetime, tuple[str, ...]] | None:
    if plan is None or not (exhausted := plan.exhausted()):
        return None
    return plan.now.replace(second=0, microsecond=0), tuple(exhausted)


def _take(due: QuerySet[CampaignItem], wanted: int) -> list[Key]:
    return list(due.values_list("campaign_id", "id")[:wanted])


def _take_marking(due: QuerySet[CampaignItem], wanted: int, *, batch: Batch) -> list[Key]:
    """Find the due items and mark them as the batch's in one statement:
    the ids do not travel to the worker and back as 500 parameters, whose
    quoting was a third of a claim's CPU in the worker, and PostgreSQL
    plans one statement instead of two. ARRAY(...) makes the found ids one
    array the update probes the primary key with, whatever the planner
    guesses of the subquery's size."""
    select, params = due.values("id")[:wanted].query.sql_with_params()
    with connection.cursor() as cur:
        cur.execute(
            f"UPDATE {CampaignItem._meta.db_table} SET status = %s, batch_id = %s"
            f" WHERE id = ANY(ARRAY({select})) RETURNING campaign_id, id",
            [S.CLAIMED.value, batch.pk, *params],
        )
        return sorted(cur.fetchall())  # RETURNING keeps no order


# A claim skips over at most this many pages of items whose provider has
# no budget left (those it can tell in advance are left out in SQL).
PROVIDER_ROUNDS = 4


def _take_within_provider_rates(
    due: QuerySet[CampaignItem], wanted: int, *, plan: ProviderPlan
) -> list[Key]:
    """Due items, in order, whose provider group still has budget this
    minute: the others stay pending, untouched, while the rest flow."""
    keys: list[Key] = []
    page = due
    for _ in range(PROVIDER_ROUNDS):
        if exhausted := plan.exhausted():
            page = page.exclude(provider_group__in=exhausted)
        short = wanted - len(keys)
        rows = list(page.values_list("campaign_id", "id", "provider_group")[:short])
        keys += [
            (campaign_id, item_id) for campaign_id, item_id, group in rows if plan.admit(group)
        ]
        if len(rows) < short or len(keys) == wanted:
            break
        page = due.filter(_beyond(rows[-1][:2]))
    return keys


# Items that count against a sending task's limit: handed to the transport,
# or about to be.
_TASK_USED = (S.CLAIMED, S.SENT, S.FAILED, S.DEFERRED, S.BOUNCED)


def _within_task_limit(
    dispatcher: Dispatcher, campaigns: list[int], wanted: int
) -> tuple[list[int], int]:
    """The dispatcher's limit per sending task: each campaign stops after
    that many messages, paused with the reason, and a claim never takes a
    campaign past it. Reads the maintained counters, not the items."""
    limit = dispatcher.task_message_limit or 0
    used: dict[int, int] = dict.fromkeys(campaigns, 0)
    waiting: set[int] = set()  # campaigns with items still to send
    for (campaign_id, status), count in status_counts(campaign_ids=campaigns).items():
        if status in _TASK_USED:
            used[campaign_id] += count
        if status in (S.PENDING, S.DEFERRED):
            waiting.add(campaign_id)
    done = [c for c, n in used.items() if n >= limit]
    # One that sent its whole audience within the limit completes as usual.
    stopped = [c for c in done if c in waiting]
    if stopped:
        Campaign.objects.filter(pk__in=stopped, status=Campaign.Status.SENDING).update(
            status=Campaign.Status.PAUSED,
            paused_reason=f"Stopped after {limit} messages: the limit per sending task of "
            f"dispatcher {dispatcher.name}. Raise it and resume to send the rest.",
        )
    left = [c for c in campaigns if c not in done]
    if left:
        wanted = min(wanted, *(limit - used[c] for c in left))
    return left, wanted


def batch_claim(
    *, dispatcher_id: int, now: datetime | None = None, most: int | None = None
) -> Batch | None:
    """Reserve budget and claim up to one batch of due items (at most
    ``most``: a pool member's turn).

    The dispatcher row is locked while the budget is checked and spent, so
    the rate check and the spend are one step for all workers together.
    Where only the dispatcher's own limits apply, the items are found and
    marked after that lock is let go (``_batch_fill``): the longest part of
    a claim, which claimers of one dispatcher then do side by side. Limits
    per provider or per sending task depend on which items are taken, so
    those claims take their items under the lock."""
    with transaction.atomic():
        claimed = _claim_locked(dispatcher_id, now or timezone.now(), most)
    if isinstance(claimed, _Reservation):
        return _batch_fill(claimed)
    return claimed


@dataclass(frozen=True)
class _Reservation:
    """Budget spent and a batch opened under the dispatcher lock, for items
    still to be found."""

    batch: Batch
    dispatcher: Dispatcher
    campaigns: list[int]
    now: datetime


def _claim_locked(
    dispatcher_id: int, now: datetime, most: int | None
) -> Batch | _Reservation | None:
    dispatcher = (
        Dispatcher.objects.select_for_update(of=("self",))
        .select_related("smtp_server")
        .get(pk=dispatcher_id)
    )
    if not dispatcher.is_enabled or dispatcher.blocked_reason:
        return None
    now = rate_clock(dispatcher=dispatcher, now=now)
    if dispatcher.retry_after is not None and dispatcher.retry_after > now:
        return None  # a pool member out of rotation, backing off
    open_batches = Batch.objects.filter(dispatcher=dispatcher, finished_at__isnull=True)
    if open_batches.count() >= MAX_OPEN_BATCHES:
        return None
    wanted = min(
        dispatcher.batch_size,
        most or dispatcher.batch_size,
        rate_budget(dispatcher=dispatcher, now=now),
    )
    if wanted <= 0:
        return None
    campaigns = _campaigns_served(dispatcher)
    if not campaigns:
        return None
    if dispatcher.task_message_limit:
        campaigns, wanted = _within_task_limit(dispatcher, campaigns, wanted)
    plan = provider_plan(dispatcher=dispatcher, now=now)
    if plan is None and not dispatcher.task_message_limit:
        # The whole budget of the claim, spent now; _batch_fill gives back
        # what it does not find. A worker that dies in between (a few
        # milliseconds) leaves it spent: fewer sent that hour, never more.
        rate_spend(dispatcher=dispatcher, count=wanted, now=now)
        batch = _batch_open(dispatcher, size=wanted, now=now)
        return _Reservation(batch, dispatcher, campaigns, now)
    held = _held_back(dispatcher, plan)
    if held is not None and _nothing_but_held.get(dispatcher.pk) == held:
        return None
    ids = _due_ids(dispatcher=dispatcher, campaigns=campaigns, wanted=wanted, now=now, plan=plan)
    if not ids:
        if held is not None:
            _nothing_but_held[dispatcher.pk] = held
        return None
    batch = _batch_open(dispatcher, size=len(ids), now=now)
    _batch_take(batch, ids, dispatcher.queue)
    rate_spend(dispatcher=dispatcher, count=len(ids), now=now)
    if plan is not None:
        provider_usage_spend(dispatcher=dispatcher, taken=plan.taken, now=now)
    return batch


def _batch_open(dispatcher: Dispatcher, *, size: int, now: datetime) -> Batch:
    lease = timedelta(seconds=settings.HERALD_BATCH_LEASE_SECONDS)
    return Batch.objects.create(
        dispatcher=dispatcher, created_at=now, lease_expires_at=now + lease, size=size
    )


def _batch_take(batch: Batch, ids: list[int], queue: str) -> None:
    """Mark the items as the batch's; its outbound task goes once they are
    committed."""
    CampaignItem.objects.filter(id__in=ids).update(status=S.CLAIMED, batch=batch)
    _batch_schedule(batch, queue)


def _batch_schedule(batch: Batch, queue: str) -> None:
    transaction.on_commit(lambda: _enqueue_batch(batch, queue))


def _batch_fill(reserved: _Reservation) -> Batch | None:
    """Find and mark the items of a reserved batch, without the dispatcher
    lock: SKIP LOCKED keeps concurrent claimers off each other's items. What
    the reservation does not use goes back to the ledger's minute of it; a
    batch that found nothing is removed."""
    batch, dispatcher, now = reserved.batch, reserved.dispatcher, reserved.now
    with transaction.atomic():
        ids = _due_ids(
            dispatcher=dispatcher,
            campaigns=reserved.campaigns,
            wanted=batch.size,
            now=now,
            into=batch,
        )
        if ids:
            _batch_schedule(batch, dispatcher.queue)
        # After the items, as every writer of both does: the counters (by
        # trigger) first, the ledger second, so none waits on another.
        rate_refund(dispatcher_id=dispatcher.pk, count=batch.size - len(ids), spent_at=now)
        if not ids:
            Batch.objects.filter(pk=batch.pk).delete()
            return None
        if len(ids) < batch.size:
            batch.size = len(ids)
            Batch.objects.filter(pk=batch.pk).update(size=batch.size)
        return batch


def _campaigns_served(dispatcher: Dispatcher) -> list[int]:
    """Sending campaigns this dispatcher works for: its own, and those of
    the pools it is a member of."""
    return list(
        campaigns_sent_through(dispatcher_id=dispatcher.pk)
        .filter(status=Campaign.Status.SENDING)
        .values_list("pk", flat=True)
        .distinct()
    )


def batch_successor_claim(*, batch_id: int) -> Batch | None:
    """Claim the next batch for the dispatcher a finished batch belonged to,
    so a worker that has just freed up need not wait for the next
    process-messages run: the limits hold as for any claim, and a pool
    member takes no more than its turn."""
    dispatcher_id = Batch.objects.filter(pk=batch_id).values_list("dispatcher_id", flat=True)
    first = dispatcher_id.first()
    if first is None:
        return None
    group = next((g for g in _claim_groups().values() if first in {m[0] for m in g}), [])
    return batch_claim(dispatcher_id=first, most=_turns(group).get(first))


Member = tuple[int, int, int]  # dispatcher id, weight, batch size


def _claim_groups() -> dict[int, list[Member]]:
    """Enabled dispatchers by priority; 0 holds those in no pool."""
    rows = (
        Dispatcher.objects.filter(is_enabled=True)
        .annotate(
            priority=Coalesce(Min("pool_memberships__priority"), 0),
            weight=Coalesce(Max("pool_memberships__weight"), 1),
        )
        .order_by("priority", "pk")
        .values_list("pk", "priority", "weight", "batch_size")
    )
    groups: dict[int, list[Member]] = {}
    for pk, priority, weight, batch_size in rows:
        groups.setdefault(priority, []).append((pk, weight if priority else 1, batch_size))
    return groups


def _turns(members: list[Member]) -> dict[int, int]:
    """The most one claim of each member may take. Of equal weights, a whole
    batch; of unequal ones, its weight times the group's unit (the largest
    that fits every member's batch size), so the work splits by weight."""
    if len({weight for _, weight, _ in members}) <= 1:
        return {pk: size for pk, _, size in members}
    unit = max(min(size // weight for _, weight, size in members), 1)
    return {pk: weight * unit for pk, weight, _ in members}


def _claim_group(members: list[Member], now: datetime) -> int:
    """Claim for a group of equal priority until none has budget or work
    left, the one furthest behind its share taking the next turn; the turns
    are sized again among those left whenever one drops out."""
    weights = {pk: weight for pk, weight, _ in members}
    taken = dict.fromkeys(weights, 0)
    turns = _turns(members)
    claimed = 0
    while turns:
        dispatcher_id = min(turns, key=lambda pk: taken[pk] / weights[pk])
        batch = batch_claim(dispatcher_id=dispatcher_id, now=now, most=turns[dispatcher_id])
        if batch is None:
            turns = _turns([m for m in members if m[0] in turns and m[0] != dispatcher_id])
            continue
        taken[dispatcher_id] += batch.size
        claimed += batch.size
    return claimed


def messages_process(*, now: datetime | None = None) -> int:
    """The process-messages job: reclaim dead batches, then claim new ones.
    Returns the items it moved (released plus claimed)."""
    now = now or timezone.now()
    claimed = batches_reclaim(now=now)
    provider_usage_prune(now=now)  # one row per domain and minute: kept an hour only
    # Pool members claim in order of priority, so the first ones spend
    # their budget before the next are asked; equals share by weight.
    for _, members in sorted(_claim_groups().items()):
        claimed += _claim_group(members, now)
    return claimed


# --- leases and dead workers ------------------------------------------------


def batch_release(*, batch: Batch, now: datetime) -> int:
    """Put a batch's unfinished items back to pending and close the batch.

    Items whose message was on the wire when it stopped may have been
    delivered: they go back flagged as possibly duplicated, and keep their
    share of the hourly budget (the server may have counted them)."""
    with transaction.atomic():
        claimed = CampaignItem.objects.filter(batch=batch, status=S.CLAIMED)
        in_doubt = claimed.filter(_on_the_wire(batch)).update(possibly_duplicated=True)
        released = claimed.update(status=S.PENDING, batch=None, sending_started_at=None)
        closed = Batch.objects.filter(pk=batch.pk, finished_at__isnull=True).update(finished_at=now)
        if closed:
            rate_refund(
                dispatcher_id=batch.dispatcher_id,
                count=released - in_doubt,
                spent_at=batch.created_at,
            )
    return released


def _on_the_wire(batch: Batch) -> Q:
    """Claimed items of the batch that may be on the wire: marked one by one
    (sending_started_at), or within the batch's on-the-wire mark."""
    mark = Batch.objects.filter(pk=batch.pk).values("on_wire_through")
    return Q(sending_started_at__isnull=False) | Q(id__lte=Subquery(mark))


def batches_reclaim(*, now: datetime) -> int:
    """Release batches whose worker is gone: started ones whose advisory
    lock is free, and any whose lease ran out (lost in the broker)."""
    released = 0
    for batch in Batch.objects.filter(finished_at__isnull=True).order_by("pk"):
        if batch.started_at is None and batch.lease_expires_at > now:
            continue  # still waiting in the queue
        with advisory_lock(space=BATCHES, key=batch.pk) as free:
            if free:
                batch.refresh_from_db()
                if batch.finished_at is None:
                    released += batch_release(batch=batch, now=now)
    return released


# --- send one batch ----------------------------------------------------------


# A message its provider refused as sent too fast goes again after this:
# the next minute's budget, at the rate that was just cut down.
THROTTLED_RETRY = timedelta(minutes=1)


def _retry_delay(attempts: int) -> timedelta:
    first = settings.HERALD_RETRY_FIRST_SECONDS
    return timedelta(
        seconds=min(first * 2 ** max(attempts - 1, 0), settings.HERALD_RETRY_MAX_SECONDS)
    )


def item_record_result(*, item: CampaignItem, result: SendResult, now: datetime) -> str:
    """Write one item's verdict; returns the status it ended in."""
    return items_record_results(results=[(item, result, now)])[0]


def _verdict(item: CampaignItem | SendingItem, result: SendResult, now: datetime) -> str:
    if result.outcome is Outcome.ACCEPTED:
        return S.SENT
    first_attempt = item.first_attempt_at or now
    give_up = timedelta(seconds=settings.HERALD_RETRY_GIVE_UP_SECONDS)
    if result.outcome is Outcome.TRANSIENT and now - first_attempt < give_up:
        return S.DEFERRED
    return S.FAILED


def items_record_results(
    *,
    results: list[tuple[CampaignItem | SendingItem, SendResult, datetime]],
    throttled: Collection[int] = (),
    on_wire: tuple[int, int] | None = None,
) -> list[str]:
    """Write many items' verdicts (each with the time it came back) in one
    UPDATE; returns the status each ended in. Only items still claimed by
    their batch are written, so a batch released meanwhile is left alone.
    ``on_wire``: (batch id, item id), the batch's items up to that id about
    to go on the wire, its mark moved so in the same statement (one round
    trip instead of two).

    Items in ``throttled`` were refused only because their provider wants
    a slower pace: retried after a minute, without counting an attempt (so
    without lengthening their back-off)."""
    if not results and not on_wire:
        return []
    rows = []
    statuses = []
    for item, result, now in results:
        status = _verdict(item, result, now)
        statuses.append(status)
        slowed = item.pk in throttled
        retry_at = None
        if status == S.DEFERRED:
            retry_at = now + (THROTTLED_RETRY if slowed else _retry_delay(item.attempts + 1))
        rows.append(
            (
                item.pk,
                item.batch_id,
                status,
                result.code,
                result.text[:500].replace("\x00", ""),  # PostgreSQL text holds no NUL
                result.queue_id[:100],
                now.isoformat(),
                retry_at and retry_at.isoformat(),
                0 if slowed else 1,
            )
        )
    with connection.cursor() as cur:
        # One JSON document, not a parameter per value: the C encoder makes
        # it in a few microseconds, where quoting arrays element by element
        # cost more than the rest of the write-back.
        batch_id, through = on_wire or (None, None)
        cur.execute(_RECORD_SQL, [through, batch_id, json.dumps(rows)])
    for (item, result, _), status in zip(results, statuses, strict=True):
        if status == S.FAILED and result.enhanced.startswith("5.1."):
            suppression_add(
                pattern=item.contact.email, source=Suppression.Source.BOUNCE, reason=result.text
            )
    return statuses


# Sent: sent_at and queue id. Deferred: out of the batch, retried later.
# Deferred or failed: the first attempt's time kept for the give-up rule.
# The batch's on-the-wire mark moves in the same statement (a data-modifying
# WITH runs whether or not it is read): one batch row a chunk, where marking
# the chunk's items wrote each of them once more (every index of the items
# table, as for any update that is not HOT).
_RECORD_SQL = f"""
    WITH marked AS (
        UPDATE {Batch._meta.db_table} SET on_wire_through = %s::bigint
        WHERE id = %s::bigint
    )
    UPDATE {CampaignItem._meta.db_table} AS i SET
        status = v.status,
        attempts = i.attempts + v.attempt,
        sending_started_at = NULL,
        smtp_code = v.code,
        smtp_response = v.response,
        sent_at = CASE WHEN v.status = '{S.SENT.value}' THEN v.at ELSE i.sent_at END,
        queue_id = CASE WHEN v.status = '{S.SENT.value}' THEN v.queue_id ELSE i.queue_id END,
        batch_id = CASE WHEN v.status = '{S.DEFERRED.value}' THEN NULL ELSE i.batch_id END,
        next_attempt_at = CASE
            WHEN v.status = '{S.DEFERRED.value}' THEN v.retry_at ELSE i.next_attempt_at END,
        first_attempt_at = CASE
            WHEN v.status = '{S.SENT.value}' THEN i.first_attempt_at
            ELSE COALESCE(i.first_attempt_at, v.at) END
    FROM (
        SELECT (r->>0)::bigint AS id, (r->>1)::bigint AS batch_id, r->>2 AS status,
               (r->>3)::integer AS code, r->>4 AS response, r->>5 AS queue_id,
               (r->>6)::timestamptz AS at, (r->>7)::timestamptz AS retry_at,
               (r->>8)::integer AS attempt
        FROM jsonb_array_elements(%s::jsonb) AS r
    ) AS v
    WHERE i.id = v.id AND i.batch_id = v.batch_id AND i.status = '{S.CLAIMED.value}'
"""


def suppression_add(*, pattern: str, source: str, reason: str = "") -> None:
    Suppression.objects.get_or_create(
        pattern=pattern.strip().lower(), defaults={"source": source, "reason": reason[:255]}
    )


def _suppression_patterns(email: str) -> tuple[str, str]:
    return email, "*@" + email.rpartition("@")[2]


def _batch_suppressed(batch: Batch, *, from_id: int = 0) -> set[str]:
    """The suppression patterns that hit the batch's unsent recipients (from
    item ``from_id`` on), in one query that does the matching itself (send-
    time check, as generation's may be hours old)."""
    with connection.cursor() as cur:
        cur.execute(_SUPPRESSED_SQL, [batch.pk, S.CLAIMED.value, from_id])
        return {pattern for (pattern,) in cur.fetchall()}


# The patterns of _suppression_patterns: the address, and "*@" + what
# follows its last "@".
_SUPPRESSED_SQL = f"""
    WITH emails AS (
        SELECT lower(c.email) AS email
        FROM {CampaignItem._meta.db_table} i
        JOIN {Contact._meta.db_table} c ON c.id = i.contact_id
        WHERE i.batch_id = %s AND i.status = %s AND i.id >= %s
    )
    SELECT s.pattern FROM {Suppression._meta.db_table} s
    WHERE s.pattern IN (SELECT email FROM emails)
       OR s.pattern IN (SELECT '*@' || substring(email FROM '[^@]*$') FROM emails)
"""


def _batch_left_lists(batch: Batch, *, from_id: int = 0) -> set[int]:
    """Claimed items (from ``from_id`` on) whose contact has left every list
    of a campaign that reaches people through lists only (a segment may
    still hold them), as the manage-subscriptions page lets them: one query
    per refresh."""
    lists = Campaign.lists.through.objects.filter(campaign_id=OuterRef("campaign_id"))
    segments = Campaign.segments.through.objects.filter(campaign_id=OuterRef("campaign_id"))
    on_a_list = Subscription.objects.filter(
        contact_id=OuterRef("contact_id"),
        contact_list__campaigns=OuterRef("campaign_id"),
        unsubscribed_at__isnull=True,
    )
    return set(
        CampaignItem.objects.filter(batch=batch, status=S.CLAIMED, pk__gte=from_id)
        .filter(Exists(lists), ~Exists(segments), ~Exists(on_a_list))
        .values_list("pk", flat=True)
    )


def _skip_reason(contact: Contact | Recipient, suppressed: set[str]) -> str:
    if contact.status != Contact.Status.ACTIVE:
        return contact.status
    if suppressed.intersection(_suppression_patterns(contact.email.lower())):
        return "suppressed"
    return ""


def _items_skip(items: list[SendingItem], reason: str) -> None:
    CampaignItem.objects.filter(
        pk__in=[item.pk for item in items], status=S.CLAIMED, batch_id=items[0].batch_id
    ).update(status=S.SKIPPED, skip_reason=reason, sending_started_at=None)


def _item_fail(item: SendingItem, reason: str, now: datetime) -> None:
    CampaignItem.objects.filter(pk=item.pk, status=S.CLAIMED, batch_id=item.batch_id).update(
        status=S.FAILED, smtp_response=reason[:500], sending_started_at=None, first_attempt_at=now
    )


def _synchronous_commit(on: bool) -> None:
    # Results are committed one by one without waiting for the WAL flush:
    # a dead worker loses nothing; only a PostgreSQL crash could lose the
    # last fraction of a second of results (see DESIGN.md, the pipeline).
    with connection.cursor() as cur:
        cur.execute(f"SET synchronous_commit TO {'on' if on else 'off'}")


def batch_send(*, batch_id: int, now: datetime | None = None) -> int:
    """The outbound job for one batch. Returns how many items it settled.
    ``now`` is the clock of the claims (a back-off starts from it)."""
    with advisory_lock(space=BATCHES, key=batch_id) as mine:
        if not mine:
            return 0  # another worker is sending this batch right now
        batch = Batch.objects.select_related("dispatcher__smtp_server").get(pk=batch_id)
        if batch.finished_at is not None:
            return 0  # a redelivered task for a batch already done
        started = now or timezone.now()
        lease = timedelta(seconds=settings.HERALD_BATCH_LEASE_SECONDS)
        Batch.objects.filter(pk=batch_id).update(
            started_at=started, lease_expires_at=started + lease
        )
        runner: type[BatchRun] = _BatchRun
        if batch.dispatcher.type == Dispatcher.Type.SMS:
            from .sms import SmsBatchRun  # sms.py imports this module: late

            runner = SmsBatchRun
        _synchronous_commit(False)
        try:
            run = runner(batch)
            run.send_all()
        finally:
            _synchronous_commit(True)
        run.close(now=now)
        return run.settled


def write_chunk(*, connections: int) -> int:
    """How many items a batch marks as going on the wire, and writes the
    results of, per UPDATE: 25 per connection, within 20 to 100. Each
    statement rewrites its rows in every index of the items table and
    waits for a round trip; 100 at a time instead of 20 took a 4-session
    relay from about 3,800 to 4,500 messages/s on loopback."""
    return min(max(25 * connections, 20), 100)


def send_window(*, connections: int) -> int:
    """How many messages an SMTP batch keeps handed over and unanswered:
    a chunk's worth, and at least the two a session holds."""
    return max(write_chunk(connections=connections), SmtpSendPool.DEPTH * connections)


def in_doubt_bound(*, connections: int) -> int:
    """The most items a batch whose worker dies can leave in doubt (flagged
    possibly duplicated when they go back): a marked chunk, plus what was
    handed over from the chunks before and not answered, or answered and
    not yet written (the send window)."""
    return write_chunk(connections=connections) + send_window(connections=connections)


class BatchRun:
    """What every kind of batch run shares: its tallies, and settling the
    batch at the end (unsent items given back, the dispatcher's health and
    each campaign's run of errors updated)."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.dispatcher = batch.dispatcher
        self.settled = 0
        self.lost: ConnectionLost | None = None
        self.errors: dict[int, int] = {}  # campaign id -> errors since its last success
        self.succeeded: set[int] = set()

    def send_all(self) -> None:
        raise NotImplementedError

    def _flag_in_doubt(self) -> None:
        # A message that was on its way when an earlier worker died may
        # have been delivered: sending it again is flagged, never hidden.
        CampaignItem.objects.filter(batch=self.batch, status=S.CLAIMED).filter(
            _on_the_wire(self.batch)
        ).update(possibly_duplicated=True)

    def _count(self, campaign_id: int, *, ok: bool) -> None:
        if ok:
            self.errors[campaign_id] = 0
            self.succeeded.add(campaign_id)
        else:
            self.errors[campaign_id] = self.errors.get(campaign_id, 0) + 1

    def _stop(self, error: str, now: datetime) -> None:
        """Retrying cannot help: stop the dispatcher and say what to fix."""
        dispatcher_stop(dispatcher=self.dispatcher, error=error, now=now)

    def close(self, now: datetime | None = None) -> None:
        """Settle the batch: give back what was not sent, update health."""
        now = now or timezone.now()
        # Alive to the end, the run knows which items may be on the wire
        # (sending_started_at, set by _lose): the mark is no longer needed.
        Batch.objects.filter(pk=self.batch.pk).update(on_wire_through=None)
        if CampaignItem.objects.filter(batch=self.batch, status=S.CLAIMED).exists():
            batch_release(batch=self.batch, now=now)
        else:
            Batch.objects.filter(pk=self.batch.pk, finished_at__isnull=True).update(finished_at=now)
        if self.lost is not None and self.lost.retry_pointless:
            self._stop(str(self.lost), now)
        elif self.lost is not None and self.settled == 0:
            dispatcher_record_failure(dispatcher=self.dispatcher, error=str(self.lost), now=now)
        elif self.settled:
            dispatcher_record_success(dispatcher=self.dispatcher)
        for campaign_id, errors in self.errors.items():
            campaign_record_errors(
                campaign_id=campaign_id, trailing=errors, reset=campaign_id in self.succeeded
            )


# The fields of SendingItem and Recipient, in their order.
_ITEM_FIELDS = (
    "id",
    "campaign_id",
    "batch_id",
    "token",
    "attempts",
    "first_attempt_at",
    "provider_group",
)
_RECIPIENT_FIELDS = tuple(
    f"contact__{name}"
    for name in ("id", "email", "first_name", "last_name", "language", "attributes", "status")
)


class _BatchRun(BatchRun):
    """One pass over a batch: build the messages, send them on the pool,
    record the results as they come back.

    Database writes go by chunks, not by item: before a chunk is handed to
    the pool, the results that came back so far are written, and the
    batch's on-the-wire mark moved past the chunk (items go in id order),
    in one statement. So a worker that dies leaves at most
    ``in_doubt_bound`` items within the mark without a result; they go back
    flagged possibly duplicated, never resent silently, and nothing is
    lost. (Items of a campaign paused during the batch, left claimed, are
    within the mark too: flagged as well should the worker die then.) A
    run that lives to the end marks exactly the items a lost session may
    have delivered (sending_started_at) and clears the mark."""

    # How often the run re-reads which campaigns are still sending, who is
    # suppressed and who left a list, so a pause or an unsubscribe takes
    # effect within a second, not after the batch. By time, not by count:
    # every 200 items, the three queries were a tenth of what a fast relay
    # cost the worker and the database.
    REFRESH_SECONDS = 1.0
    FLUSH_SECONDS = 0.25  # results wait at most this long to be written

    def __init__(self, batch: Batch) -> None:
        super().__init__(batch)
        self.footer = MarketingConfiguration.load()  # the footers, once per batch
        self.skeletons: dict[int, MessageSkeleton] = {}  # campaign id -> skeleton
        self.campaigns: dict[int, Campaign] = {}
        self.sending: set[int] = set()
        self.suppressed: set[str] = set()
        self.left: set[int] = set()  # items whose contact left the campaign's lists
        self.return_domain = bounce_domain(self.dispatcher)
        self.skipped: dict[str, list[SendingItem]] = {}  # reason -> items
        self.results: list[tuple[SendingItem, SendResult, datetime]] = []
        self.oldest_result = 0.0
        self.chunk = write_chunk(connections=self.dispatcher.connections)
        self.provider_rates = provider_rates(dispatcher=self.dispatcher)

    def items(self) -> Iterator[SendingItem]:
        # Plain rows, not model instances (campaigns once per batch, in
        # _campaign, not per row).
        rows = (
            CampaignItem.objects.filter(batch=self.batch, status=S.CLAIMED)
            .order_by("id")
            .values_list(*_ITEM_FIELDS, *_RECIPIENT_FIELDS)
        )
        split = len(_ITEM_FIELDS)
        for row in rows.iterator(chunk_size=500):
            yield SendingItem(*row[:split], Recipient(*row[split:]))

    def send_all(self) -> None:
        self._flag_in_doubt()
        pool: SendPool[SendingItem] = send_pool_for(
            self.dispatcher,
            signer=signer_for(dispatcher=self.dispatcher),  # the DKIM key, once per batch
            window=send_window(connections=self.dispatcher.connections),
        )
        try:
            chunk: list[tuple[SendingItem, WireMessage]] = []
            refreshed = -math.inf
            for item in self.items():
                if time.monotonic() - refreshed >= self.REFRESH_SECONDS:
                    self._refresh(from_id=item.pk)
                    refreshed = time.monotonic()
                if self.lost is not None:
                    break
                ready = self._prepare(item)
                if ready is not None:
                    chunk.append(ready)
                if len(chunk) >= self.chunk:
                    self._send_chunk(pool, chunk)
                    chunk = []
            if chunk and self.lost is None:
                self._send_chunk(pool, chunk)
            self._write_skips()
            self._collect(pool.drain())
        finally:
            pool.close()
            self._write_results()

    def _refresh(self, *, from_id: int) -> None:
        self.sending = batch_sending_campaigns(self.batch)
        # Only what is still to come: earlier items are done.
        if self.dispatcher.check_suppressions:
            self.suppressed = _batch_suppressed(self.batch, from_id=from_id)
        self.left = _batch_left_lists(self.batch, from_id=from_id)

    def _prepare(self, item: SendingItem) -> tuple[SendingItem, WireMessage] | None:
        """The item's message, or None when it is not to be sent now."""
        if item.campaign_id not in self.sending:
            return None  # paused or cancelled meanwhile: released at the end
        campaign = self._campaign(item.campaign_id)
        reason = _skip_reason(item.contact, self.suppressed)
        if not reason and item.pk in self.left:
            reason = "unsubscribed"
        if reason:
            self.skipped.setdefault(reason, []).append(item)
            return None
        try:
            message = message_render(
                skeleton=self._skeleton(campaign), item=item, contact=item.contact
            )
        except MessageBuildError as exc:
            _item_fail(item, str(exc), timezone.now())
            self.settled += 1
            return None
        return item, message

    def _send_chunk(
        self, pool: SendPool[SendingItem], chunk: list[tuple[SendingItem, WireMessage]]
    ) -> None:
        self._write_skips()
        # The results so far (so marked-but-unrecorded stays within
        # in_doubt_bound) and the batch's mark moved past the chunk (items go
        # in id order), in one statement, committed before the first of them
        # leaves (autocommit).
        self._write_results(on_wire=(self.batch.pk, chunk[-1][0].pk))
        for item, message in chunk:
            if self.lost is not None:
                return  # the connection is gone: the rest never left
            sender = verp_address(token=item.token, domain=self.return_domain)
            pool.submit(item, message, sender=sender, recipient=item.contact.email)
            while pool.full:
                self._collect(pool.completed(block=True))
            self._collect(pool.completed(block=False))

    def _campaign(self, campaign_id: int) -> Campaign:
        campaign = self.campaigns.get(campaign_id)
        if campaign is None:
            campaign = Campaign.objects.select_related("template").get(pk=campaign_id)
            self.campaigns[campaign_id] = campaign
        return campaign

    def _skeleton(self, campaign: Campaign) -> MessageSkeleton:
        skeleton = self.skeletons.get(campaign.pk)
        if skeleton is None:
            # Per campaign, not per template: tracking rewrites a campaign's links.
            compiled = template_compile(
                template=campaign.template, footer=self.footer, campaign=campaign
            )
            skeleton = self.skeletons[campaign.pk] = message_skeleton(
                campaign=campaign,
                dispatcher=self.dispatcher,
                return_domain=self.return_domain,
                compiled=compiled,
            )
        return skeleton

    def _collect(self, outcomes: Iterator[Completion[SendingItem]]) -> None:
        for outcome in outcomes:
            if outcome.result is None:
                self._lose(outcome.key, outcome.lost)
                continue
            if not self.results:
                self.oldest_result = time.monotonic()
            self.results.append((outcome.key, outcome.result, timezone.now()))
        if len(self.results) >= self.chunk or (
            self.results and time.monotonic() - self.oldest_result > self.FLUSH_SECONDS
        ):
            self._write_results()

    def _write_results(self, on_wire: tuple[int, int] | None = None) -> None:
        results, self.results = self.results, []
        throttled = {
            item.pk: result
            for item, result, _ in results
            if result.throttled and configured_rate(self.provider_rates, item.provider_group)
        }
        statuses = items_record_results(results=results, throttled=throttled, on_wire=on_wire)
        self.settled += len(results)
        for (item, _, _), status in zip(results, statuses, strict=True):
            if item.pk not in throttled:  # a pace to slow down to, not a campaign's error
                self._count(item.campaign_id, ok=status == S.SENT)
        self._slow_down(results, throttled)

    def _slow_down(
        self,
        results: list[tuple[SendingItem, SendResult, datetime]],
        throttled: dict[int, SendResult],
    ) -> None:
        """Each provider that refused messages as sent too fast gets slower."""
        replies = {
            item.provider_group: throttled[item.pk]
            for item, _, _ in results
            if item.pk in throttled
        }
        for group, result in replies.items():
            provider_throttle_record(
                dispatcher=self.dispatcher,
                group=group,
                reply=f"{result.code} {result.text}",
                claimed_at=self.batch.created_at,
            )

    def _write_skips(self) -> None:
        for reason, items in self.skipped.items():
            _items_skip(items, reason)
            self.settled += len(items)
        self.skipped = {}

    def _lose(self, item: SendingItem, lost: ConnectionLost | None) -> None:
        if lost is None or lost.maybe_delivered:
            # In doubt: marked one by one, as the batch's mark goes at close.
            CampaignItem.objects.filter(pk=item.pk).update(sending_started_at=timezone.now())
        self.lost = self.lost or lost


def batch_sending_campaigns(batch: Batch) -> set[int]:
    """Which campaigns of the batch's items still to send are sending."""
    # Two short queries: as one (campaign IN items of the batch), the
    # planner walked each sending campaign's items instead, milliseconds
    # on a large campaign, three times a batch.
    campaign_ids = set(
        CampaignItem.objects.filter(batch=batch, status=S.CLAIMED)
        .order_by()
        .values_list("campaign_id", flat=True)
        .distinct()
    )
    return set(
        Campaign.objects.filter(pk__in=campaign_ids, status=Campaign.Status.SENDING)
        .order_by()
        .values_list("pk", flat=True)
    )


# --- health: dispatchers and campaigns that keep failing ---------------------


def dispatcher_record_failure(
    *, dispatcher: Dispatcher, error: str, now: datetime | None = None
) -> None:
    """A batch could not reach or log in to its server. Enough of those in a
    row pause the dispatcher, instead of burning through the audience."""
    Dispatcher.objects.filter(pk=dispatcher.pk).update(
        consecutive_failures=F("consecutive_failures") + 1, last_error=error[:500]
    )
    dispatcher.refresh_from_db(fields=["consecutive_failures", "is_enabled"])
    if pool_member_fail(dispatcher=dispatcher, error=error, now=now):
        return  # out of rotation for a while; the pool's other members go on
    limit = settings.HERALD_DISPATCHER_MAX_FAILURES
    if dispatcher.is_enabled and dispatcher.consecutive_failures >= limit:
        reason = f"Paused after {dispatcher.consecutive_failures} failed connections: {error}"
        if dispatcher_pause(dispatcher=dispatcher, reason=reason):
            notification_raise(
                key=f"dispatcher:{dispatcher.pk}:paused",
                title=f"Dispatcher {dispatcher.name} paused itself",
                message=reason,
                level="error",
            )


def dispatcher_stop(*, dispatcher: Dispatcher, error: str, now: datetime | None = None) -> None:
    """Retrying cannot help (login rejected, server deactivated): pause at
    once and tell the administrators what to do."""
    reason = f"Stopped: {error}"
    pool_member_record_failover(dispatcher=dispatcher, reason=reason, now=now)
    if dispatcher_pause(dispatcher=dispatcher, reason=reason):
        notification_raise(
            key=f"dispatcher:{dispatcher.pk}:paused",
            title=f"Dispatcher {dispatcher.name} stopped sending",
            message=f"{error} Fix the SMTP server's settings (or generate its tokens again), "
            "then resume the dispatcher.",
            level="error",
        )


def dispatcher_record_success(*, dispatcher: Dispatcher) -> None:
    rejoined = (
        Dispatcher.objects.filter(pk=dispatcher.pk)
        .exclude(consecutive_failures=0, retry_after__isnull=True)
        .update(consecutive_failures=0, last_error="", retry_after=None)
    )
    if rejoined:
        notification_resolve(key=f"dispatcher:{dispatcher.pk}:failover")


def campaign_record_errors(*, campaign_id: int, trailing: int, reset: bool) -> None:
    """Keep the campaign's run of send errors; too long a run pauses it."""
    new = F("consecutive_errors") + trailing if not reset else trailing
    Campaign.objects.filter(pk=campaign_id).update(consecutive_errors=new)
    limit = settings.HERALD_CAMPAIGN_MAX_CONSECUTIVE_ERRORS
    campaign = Campaign.objects.get(pk=campaign_id)
    if campaign.consecutive_errors < limit or campaign.status != Campaign.Status.SENDING:
        return
    reason = f"Paused after {campaign.consecutive_errors} send errors in a row."
    if campaign_pause(campaign=campaign, reason=reason):
        notification_raise(
            key=f"campaign:{campaign_id}:paused",
            title=f"Campaign {campaign.name} paused itself",
            message=reason + " Check the dispatcher and the last item errors, then resume.",
            level="error",
        )


# --- complete ----------------------------------------------------------------


def campaign_failed_retry_after_sending(*, campaign: Campaign) -> int:
    """The dispatcher option "set erroneous entries back to unsent after
    sending": when a campaign has nothing left to send, its failed items
    get one more try. Only items that failed at their first and only
    attempt qualify, and they keep that attempt, so a retry that fails
    again is final; never a loop."""
    return CampaignItem.objects.filter(campaign=campaign, status=S.FAILED, attempts=1).update(
        status=S.PENDING,
        batch=None,
        next_attempt_at=None,
        sending_started_at=None,
        smtp_code=None,
        smtp_response="",
    )


def campaigns_complete(*, now: datetime | None = None) -> int:
    """Close sending campaigns with no live item left; freeze counters."""
    now = now or timezone.now()
    live = CampaignItem.objects.filter(campaign=OuterRef("pk"), status__in=CampaignItem.LIVE)
    done = 0
    finished = Campaign.objects.filter(
        status=Campaign.Status.SENDING, kind=Campaign.Kind.REGULAR
    ).exclude(Exists(live))
    for campaign in finished.select_related("dispatcher"):
        if campaign.dispatcher.retry_failed_after_sending and (
            campaign_failed_retry_after_sending(campaign=campaign)
        ):
            continue  # the failed ones go out once more first
        counts = campaign_counts(campaign_id=campaign.pk)
        done += (
            Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.SENDING)
            .exclude(Exists(live))
            .update(
                status=Campaign.Status.COMPLETED,
                completed_at=now,
                total_count=sum(counts.values()),
                sent_count=counts.get(S.SENT, 0),
                failed_count=counts.get(S.FAILED, 0) + counts.get(S.BOUNCED, 0),
                skipped_count=counts.get(S.SKIPPED, 0),
            )
        )
    return done


# --- housekeeping ------------------------------------------------------------


def history_prune(*, now: datetime | None = None) -> int:
    """Forget what no page shows any more: job runs and finished batches
    past the history period, and rate-ledger minutes outside the window."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.HERALD_HISTORY_DAYS)
    pruned = job_runs_prune(older_than=cutoff)
    # One DELETE: the items these batches sent keep their id (no index
    # finds them by batch once sent; see CampaignItem.batch).
    old_batches = Batch.objects.filter(finished_at__lt=cutoff)
    pruned += old_batches.delete()[0]
    return pruned + rate_usage_prune(now=now)


# --- unsubscribe -------------------------------------------------------------


def contact_unsubscribe(*, token: str, source: str) -> str | None:
    """Unsubscribe the contact an item was sent to; returns its address."""
    item = CampaignItem.objects.select_related("contact").filter(token=token).first()
    if item is None:
        return None
    contact = item.contact
    left = (
        Contact.objects.filter(pk=contact.pk)
        .exclude(status=Contact.Status.UNSUBSCRIBED)
        .update(
            status=Contact.Status.UNSUBSCRIBED, source=contact.source or f"unsubscribe:{source}"
        )
    )
    if left:  # counted once, for the campaign whose message they left from
        Campaign.objects.filter(pk=item.campaign_id).update(unsubscribes=F("unsubscribes") + 1)
    return contact.email
