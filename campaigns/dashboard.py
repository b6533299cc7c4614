"""What the admin home page shows: live campaigns, the audience, dispatchers.

``dashboard_for`` is the one entry point: it decides from the user's
permissions which parts they may see, so a template never has to."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db.models import Case, Count, IntegerField, Q, QuerySet, Sum, Value, When
from django.utils import timezone

from dispatchers.models import Dispatcher
from dispatchers.ratelimit import WINDOW
from jobs.models import Notification
from jobs.selectors import notifications_open

from .models import Campaign, Contact, ContactList
from .selectors import Progress, campaign_progress

S = Campaign.Status

# Busiest first: what is going out now matters more than what waits.
LIVE_STATUSES = (S.SENDING, S.GENERATING, S.SCHEDULED, S.PAUSED)


@dataclass(frozen=True)
class LiveCampaign:
    campaign: Campaign
    progress: Progress


@dataclass(frozen=True)
class Audience:
    """Counts the user may see; None where they lack the permission."""

    contacts: int | None
    active_contacts: int | None
    lists: int | None


@dataclass(frozen=True)
class Dashboard:
    campaigns: list[LiveCampaign] | None
    campaigns_more: int
    audience: Audience
    dispatchers: list[Dispatcher] | None
    notifications: list[Notification] | None = None

    @property
    def campaigns_total(self) -> int:
        return len(self.campaigns or []) + self.campaigns_more

    @property
    def dispatchers_paused(self) -> int:
        return sum(not d.is_enabled for d in self.dispatchers or [])


def live_campaigns_query() -> QuerySet[Campaign]:
    rank = Case(
        *(When(status=s, then=Value(i)) for i, s in enumerate(LIVE_STATUSES)),
        output_field=IntegerField(),
    )
    return (
        Campaign.objects.filter(status__in=LIVE_STATUSES)
        .select_related("dispatcher")
        .order_by(rank, "scheduled_at", "pk")
    )


def live_campaigns(*, limit: int) -> list[LiveCampaign]:
    # One count query per campaign: fine for the handful a page shows.
    return [
        LiveCampaign(campaign=c, progress=campaign_progress(campaign=c))
        for c in live_campaigns_query()[:limit]
    ]


def audience_counts(*, with_contacts: bool, with_lists: bool) -> Audience:
    contacts = active = lists = None
    if with_contacts:
        row = Contact.objects.aggregate(
            total=Count("id"), active=Count("id", filter=Q(status=Contact.Status.ACTIVE))
        )
        contacts, active = row["total"], row["active"]
    if with_lists:
        lists = ContactList.objects.count()
    return Audience(contacts=contacts, active_contacts=active, lists=lists)


def dispatcher_states() -> list[Dispatcher]:
    """Every dispatcher, with ``used_last_hour``: messages reserved against
    its hourly limit in the current window (the rate ledger's view)."""
    window_start = timezone.now().replace(second=0, microsecond=0) - WINDOW
    used = Sum("usage__count", filter=Q(usage__minute__gt=window_start), default=0)
    return list(Dispatcher.objects.annotate(used_last_hour=used).order_by("name"))


def dashboard_for(*, user: AbstractUser | AnonymousUser, campaign_limit: int = 8) -> Dashboard:
    campaigns: list[LiveCampaign] | None = None
    more = 0
    if user.has_perm("campaigns.view_campaign"):
        campaigns = live_campaigns(limit=campaign_limit)
        if len(campaigns) == campaign_limit:
            more = live_campaigns_query().count() - campaign_limit
    can_see_dispatchers = user.has_perm("dispatchers.view_dispatcher")
    return Dashboard(
        campaigns=campaigns,
        campaigns_more=more,
        audience=audience_counts(
            with_contacts=user.has_perm("campaigns.view_contact"),
            with_lists=user.has_perm("campaigns.view_contactlist"),
        ),
        dispatchers=dispatcher_states() if can_see_dispatchers else None,
        notifications=(notifications_open() if user.has_perm("jobs.view_notification") else None),
    )
