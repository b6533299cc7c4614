"""A campaign's report page: live counts and chart, the per-recipient
table, and its CSV export."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.text import slugify

from . import action_views, exports, reports
from .models import Campaign, CampaignItem


class RecipientFilterForm(forms.Form):
    email = forms.CharField(required=False, max_length=254, label="Email starts with")
    status = forms.ChoiceField(
        required=False,
        choices=[("", "Any status")] + [(s.value, s.label) for s in reports.REPORT_STATUSES],
    )
    after = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)
    before = forms.IntegerField(required=False, min_value=0, widget=forms.HiddenInput)


def _campaign(pk: int) -> Campaign:
    return get_object_or_404(Campaign.objects.select_related("dispatcher", "template"), pk=pk)


def live_context(campaign: Campaign, user: Any) -> dict[str, Any]:
    counts = reports.report_counts(campaign=campaign)
    return {
        "campaign": campaign,
        # The actions follow the status as it changes (pause, then resume...).
        "actions": action_views.actions_for(user, campaign),
        "counts": counts,
        "engagement": reports.engagement(campaign=campaign, sent=counts.sent),
        "chart": reports.sends_per_minute(campaign=campaign),
    }


def report_context(request: HttpRequest, campaign: Campaign) -> tuple[dict[str, Any], int]:
    form = RecipientFilterForm(request.GET)
    status = 200
    page = None
    query = ""
    can_see_items = request.user.has_perm("campaigns.view_campaignitem")
    if can_see_items and form.is_valid():
        data = form.cleaned_data
        page = reports.recipients_page(
            campaign=campaign,
            email=data["email"],
            status=data["status"],
            after=data["after"],
            before=data["before"],
        )
        query = urlencode({k: data[k] for k in ("email", "status") if data[k]})
    elif can_see_items:
        status = 400
    context = {
        **admin.site.each_context(request),
        "title": campaign.name,
        **live_context(campaign, request.user),
        "form": form,
        "page": page,
        "query": query,
        "polling": campaign.is_live or campaign.status == Campaign.Status.PAUSED,
        "opts": Campaign._meta,
    }
    if request.user.has_perm("campaigns.view_template"):
        context["preview_url"] = reverse("campaigns:campaign_preview", args=[campaign.pk])
    if campaign.status == Campaign.Status.DRAFT:
        # Before scheduling: whom it would reach, and how many are held back.
        context["audience"] = reports.audience_counts(campaign=campaign)
        context["schedule_form"] = action_views.ScheduleForm()
    return context, status


@login_required
@permission_required("campaigns.view_campaign", raise_exception=True)
def campaign_report(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = _campaign(pk)
    context, status = report_context(request, campaign)
    return render(request, "campaigns/report.html", context, status=status)


@login_required
@permission_required("campaigns.view_campaign", raise_exception=True)
def campaign_report_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The part of the report that refreshes itself (live.js swaps it in)."""
    context = live_context(_campaign(pk), request.user)
    return render(request, "campaigns/_report_live.html", context)


@login_required
@permission_required("campaigns.view_campaignitem", raise_exception=True)
def campaign_recipients_export(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = _campaign(pk)
    status = request.GET.get("status", "")
    if status not in CampaignItem.Status.values:
        status = ""
    rows = reports.recipients_export_rows(campaign=campaign, status=status)
    response = StreamingHttpResponse(exports.csv_lines(rows), content_type="text/csv")
    name = f"{slugify(campaign.name) or 'campaign'}-{campaign.pk}-{timezone.now():%Y%m%d-%H%M}"
    response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    return response
