"""Campaign actions from the report page. Each action says in which
statuses it makes sense and which permission it needs; the page shows
only what applies, and a forged POST gets the same answer in words."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone

from . import lifecycle, reports, services
from .models import Campaign

C = Campaign.Status
LIVE = (C.SCHEDULED, C.GENERATING, C.SENDING)
ANY = tuple(C.values)


@dataclass(frozen=True)
class Action:
    key: str
    label: str
    statuses: tuple[str, ...]
    permission: str
    verb: str  # for "Cannot <verb> a campaign that is ..."
    confirm: bool = False  # destructive: a page naming the count first

    def allowed(self, campaign: Campaign) -> bool:
        return campaign.status in self.statuses


ACTIONS = {
    a.key: a
    for a in (
        Action("schedule", "Schedule", (C.DRAFT,), "campaigns.change_campaign", "schedule"),
        Action(
            "unschedule", "Unschedule", (C.SCHEDULED,), "campaigns.change_campaign", "unschedule"
        ),
        Action("pause", "Pause", LIVE, "campaigns.pause_campaign", "pause"),
        Action("resume", "Resume", (C.PAUSED,), "campaigns.pause_campaign", "resume"),
        Action(
            "cancel", "Cancel", lifecycle.CANCELLABLE, "campaigns.change_campaign", "cancel", True
        ),
        Action("duplicate", "Duplicate", ANY, "campaigns.add_campaign", "duplicate"),
        Action(
            "reset_failed",
            "Reset failed to unsent",
            lifecycle.RESETTABLE,
            "campaigns.change_campaign",
            "reset failed recipients of",
            True,
        ),
        Action(
            "resend_all",
            "Resend to all",
            lifecycle.RESENDABLE,
            "campaigns.add_campaign",
            "resend",
            True,
        ),
    )
}


def actions_for(user: Any, campaign: Campaign) -> list[Action]:
    return [a for a in ACTIONS.values() if user.has_perm(a.permission) and a.allowed(campaign)]


class ScheduleForm(forms.Form):
    when = forms.DateTimeField(
        required=False,
        label="Send at",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"],
        help_text="Empty: send now.",
    )
    time_zone = forms.ChoiceField(label="Time zone", required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        zones = sorted(zoneinfo.available_timezones())
        self.fields["time_zone"].choices = [(z, z) for z in zones]
        self.fields["time_zone"].initial = settings.TIME_ZONE

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        when: datetime | None = data.get("when")
        if when is not None:
            zone = zoneinfo.ZoneInfo(data.get("time_zone") or settings.TIME_ZONE)
            # The browser sends the wall-clock time; it means that time in
            # the chosen zone, not in the server's.
            data["when"] = timezone.make_aware(timezone.make_naive(when), zone)
            if data["when"] < timezone.now() - timedelta(minutes=1):
                raise forms.ValidationError("That time is in the past; leave it empty to send now.")
        return data


def confirm_count(action: Action, campaign: Campaign) -> tuple[int, str]:
    """The number the confirmation names, and what it counts."""
    if action.key == "reset_failed":
        return reports.report_counts(
            campaign=campaign
        ).failed, "failed recipients go back to unsent"
    if action.key == "cancel":
        c = reports.report_counts(campaign=campaign)
        if campaign.kind == Campaign.Kind.REGULAR and not campaign.audience_complete:
            # Part of the audience has no item yet: count people, not items.
            reached = c.sent + c.failed + c.bounced
            n = max(reports.audience_counts(campaign=campaign).receiving - reached, 0)
            return n, "recipients will not get it"
        return c.pending + c.deferred, "unsent messages will not be sent"
    audience = reports.audience_counts(campaign=campaign)
    return audience.receiving, "recipients on its lists get it again, in a new campaign"


def _campaign(pk: int) -> Campaign:
    return get_object_or_404(Campaign.objects.select_related("dispatcher", "template"), pk=pk)


def _run(request: HttpRequest, action: Action, campaign: Campaign) -> HttpResponse:
    report = redirect("campaigns:campaign_report", pk=campaign.pk)
    if action.key == "schedule":
        form = ScheduleForm(request.POST)
        if not form.is_valid():
            errors = [e for errs in form.errors.values() for e in errs]
            raise ValidationError(errors)
        when = form.cleaned_data["when"]
        services.campaign_schedule(campaign=campaign, when=when)
        at = timezone.localtime(when).strftime("%Y-%m-%d %H:%M %Z") if when else "now"
        messages.success(request, f"Scheduled to send {at}.")
    elif action.key == "unschedule":
        lifecycle.campaign_unschedule(campaign=campaign)
        messages.success(request, "Unscheduled: back to draft.")
    elif action.key == "pause":
        if not services.campaign_pause(campaign=campaign, reason="Paused by " + str(request.user)):
            raise ValidationError("The campaign changed meanwhile; reload and try again.")
        messages.success(request, "Paused. Nothing more is sent until you resume it.")
    elif action.key == "resume":
        if not services.campaign_resume(campaign=campaign):
            raise ValidationError("The campaign changed meanwhile; reload and try again.")
        messages.success(request, "Resumed.")
    elif action.key == "cancel":
        lifecycle.campaign_cancel(campaign=campaign)
        messages.success(request, "Cancelled. No further message of it is sent.")
    elif action.key == "duplicate":
        copy = services.campaign_duplicate(campaign=campaign, user=request.user)
        messages.success(request, f"Duplicated as the draft “{copy.name}”.")
        return redirect("campaigns:campaign_report", pk=copy.pk)
    elif action.key == "reset_failed":
        n = lifecycle.campaign_reset_failed(campaign=campaign)
        messages.success(request, f"{n} failed recipient(s) reset to unsent.")
    elif action.key == "resend_all":
        copy = lifecycle.campaign_resend_all(campaign=campaign, user=request.user)
        messages.success(request, f"Resending to all as “{copy.name}”, scheduled now.")
        return redirect("campaigns:campaign_report", pk=copy.pk)
    return report


@login_required
def campaign_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    chosen = ACTIONS.get(action)
    if chosen is None:
        raise Http404(f"No campaign action {action!r}.")
    if not request.user.has_perm(chosen.permission):
        raise PermissionDenied(f"Your role may not {chosen.verb} campaigns.")
    campaign = _campaign(pk)
    report_url = reverse("campaigns:campaign_report", args=[campaign.pk])
    if not chosen.allowed(campaign):
        names = ", ".join(C(s).label.lower() for s in chosen.statuses)
        messages.error(
            request,
            f"Cannot {chosen.verb} a campaign that is {campaign.get_status_display().lower()}; "
            f"only {names} campaigns can be.",
        )
        return redirect(report_url)
    if request.method != "POST" or (chosen.confirm and request.POST.get("confirmed") != "yes"):
        if not chosen.confirm:
            return redirect(report_url)
        count, what = confirm_count(chosen, campaign)
        context = {
            **admin.site.each_context(request),
            "title": f"{chosen.label}: {campaign.name}",
            "campaign": campaign,
            "action": chosen,
            "count": count,
            "what": what,
        }
        return render(request, "campaigns/action_confirm.html", context)
    try:
        return _run(request, chosen, campaign)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect(report_url)
