"""Reads of campaign state for pages, reports and jobs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce

from .models import Campaign, CampaignItem, CampaignStatusCount

S = CampaignItem.Status


def campaigns_sent_through(*, dispatcher_id: int) -> QuerySet[Campaign]:
    """Campaigns a dispatcher sends for: its own, and those of the pools it
    is a member of."""
    return Campaign.objects.filter(
        Q(dispatcher_id=dispatcher_id) | Q(pool__members__dispatcher_id=dispatcher_id)
    )


def status_counts(
    *, campaign_ids: Iterable[int], statuses: Iterable[str] | None = None
) -> dict[tuple[int, str], int]:
    """Items by (campaign, status), from the counters the database keeps
    (no item is read, however many there are): the sum of each counter's
    slots, those above zero only."""
    rows = CampaignStatusCount.objects.filter(campaign_id__in=list(campaign_ids))
    if statuses is not None:
        rows = rows.filter(status__in=list(statuses))
    sums = rows.values("campaign_id", "status").annotate(n=Sum("count")).filter(n__gt=0)
    return {(r["campaign_id"], r["status"]): r["n"] for r in sums.order_by()}


def campaign_counts(*, campaign_id: int) -> dict[str, int]:
    """Items by status, from the counters the database keeps."""
    counts = status_counts(campaign_ids=[campaign_id])
    return {status: n for (_, status), n in counts.items()}


@dataclass(frozen=True)
class Progress:
    total: int
    sent: int
    failed: int
    skipped: int
    deferred: int
    in_flight: int

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0


def campaign_progress(*, campaign: Campaign) -> Progress:
    if campaign.status == Campaign.Status.COMPLETED:
        c = campaign
        return Progress(c.total_count, c.sent_count, c.failed_count, c.skipped_count, 0, 0)
    counts = getattr(campaign, "item_counts", None)
    if counts is None:
        counts = campaign_counts(campaign_id=campaign.pk)
    return _progress(counts)


def campaigns_with_counts(queryset: QuerySet[Campaign]) -> QuerySet[Campaign]:
    """Annotate each campaign with its item counts by status in the same
    query (one counter row lookup each), so a page of campaigns with
    progress bars costs one query."""
    return queryset.annotate(
        **{
            f"items_{status}": Coalesce(
                Subquery(
                    CampaignStatusCount.objects.filter(campaign_id=OuterRef("pk"), status=status)
                    .values("campaign_id")
                    .annotate(n=Sum("count"))
                    .values("n")[:1]
                ),
                0,
            )
            for status in S.values
        }
    )


def attach_counts(campaigns: list[Campaign]) -> None:
    for campaign in campaigns:
        if hasattr(campaign, f"items_{S.PENDING}"):
            campaign.item_counts = {s: getattr(campaign, f"items_{s}") for s in S.values}


def _progress(counts: dict[str, int]) -> Progress:
    return Progress(
        total=sum(counts.values()),
        sent=counts.get(S.SENT, 0),
        failed=counts.get(S.FAILED, 0) + counts.get(S.BOUNCED, 0),
        skipped=counts.get(S.SKIPPED, 0),
        deferred=counts.get(S.DEFERRED, 0),
        in_flight=counts.get(S.PENDING, 0) + counts.get(S.CLAIMED, 0),
    )
