"""Reads of campaign state for pages, reports and jobs."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from .models import Campaign, CampaignItem, CampaignStatusCount

S = CampaignItem.Status


def campaigns_sent_through(*, dispatcher_id: int) -> QuerySet[Campaign]:
    """Campaigns a dispatcher sends for: its own, and those of the pools it
    is a member of."""
    return Campaign.objects.filter(
        Q(dispatcher_id=dispatcher_id) | Q(pool__members__dispatcher_id=dispatcher_id)
    )


def campaign_counts(*, campaign_id: int) -> dict[str, int]:
    """Items by status, from the counters the database keeps (no item is
    read, however many there are)."""
    rows = CampaignStatusCount.objects.filter(campaign_id=campaign_id, count__gt=0)
    return dict(rows.values_list("status", "count"))


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
                    CampaignStatusCount.objects.filter(
                        campaign_id=OuterRef("pk"), status=status
                    ).values("count")[:1]
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
