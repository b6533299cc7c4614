"""Reads of campaign state for pages, reports and jobs."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet

from .models import Campaign, CampaignItem

S = CampaignItem.Status


def campaign_counts(*, campaign_id: int) -> dict[str, int]:
    rows = (
        CampaignItem.objects.filter(campaign_id=campaign_id)
        .values("status")
        .annotate(n=Count("id"))
        .order_by()
    )
    return {row["status"]: row["n"] for row in rows}


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
    query, so a list of campaigns with progress bars costs one query."""
    return queryset.annotate(
        **{f"items_{status}": Count("items", filter=Q(items__status=status)) for status in S.values}
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
