from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString

from accounts.singleton import SingletonAdmin
from dispatchers.models import Dispatcher

from . import services
from .audience import segment_count
from .models import (
    Campaign,
    CampaignItem,
    Contact,
    ContactList,
    MarketingConfiguration,
    Segment,
    Subscription,
    Suppression,
    Template,
)
from .preferences import subscriptions_leave
from .selectors import attach_counts, campaign_progress, campaigns_with_counts


class SubscriptionFormSet(forms.BaseInlineFormSet):
    def delete_existing(self, obj: Subscription, commit: bool = True) -> None:
        # Removing a contact from a list records that they left it, so an
        # import or the API cannot silently put them back.
        if commit and obj.is_subscribed:
            subscriptions_leave(
                contact=obj.contact, list_ids=[obj.contact_list_id], via=Subscription.Via.ADMIN
            )


class SubscriptionInline(admin.TabularInline):
    """The contact's lists, each with its consent record and, for a list
    they left, when and how. Leaving and coming back are the contact's
    own acts (the manage-subscriptions page) or the API's, never an edit
    here, so the record cannot be rewritten by hand."""

    model = Subscription
    formset = SubscriptionFormSet
    extra = 0
    autocomplete_fields = ("contact_list",)
    fields = ("contact_list", "list_status", "created_at", "source")
    readonly_fields = ("list_status", "created_at")
    verbose_name_plural = "lists (ticking “delete” unsubscribes, keeping the record)"

    @admin.display(description="status")
    def list_status(self, obj: Subscription) -> str:
        if obj.pk is None:
            return ""
        if obj.is_subscribed:
            return "Subscribed"
        how = obj.get_unsubscribed_via_display() or "unknown"
        return f"Unsubscribed on {obj.unsubscribed_at:%Y-%m-%d %H:%M} ({how})"


class SubscribedListFilter(admin.SimpleListFilter):
    """Contacts subscribed to a list now (not those who left it)."""

    title = "subscribed to list"
    parameter_name = "list"

    def lookups(self, request, model_admin):  # type: ignore[no-untyped-def]
        return list(ContactList.objects.values_list("pk", "name"))

    def queryset(self, request, queryset):  # type: ignore[no-untyped-def]
        if not (self.value() or "").isdigit():
            return queryset
        on_list = Subscription.objects.filter(
            contact_id=OuterRef("pk"), contact_list_id=int(self.value()), unsubscribed_at=None
        )
        return queryset.filter(Exists(on_list))


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = ("email", "first_name", "last_name", "status", "created_at")
    list_filter = ("status", SubscribedListFilter)
    search_fields = ("email", "first_name", "last_name")
    inlines = (SubscriptionInline,)
    change_list_template = "campaigns/import_changelist.html"

    def changelist_view(self, request, extra_context=None):  # type: ignore[no-untyped-def]
        extra_context = extra_context or {}
        if request.user.has_perm("campaigns.add_contact"):
            extra_context["herald_import_url"] = reverse("campaigns:contact_import")
        if request.user.has_perm("campaigns.view_contact"):
            # The export follows the list and status filters of the page.
            query = {
                "list": request.GET.get("list", ""),
                "status": request.GET.get("status__exact", ""),
            }
            query = {k: v for k, v in query.items() if v}
            url = reverse("campaigns:contact_export")
            extra_context["herald_export_url"] = f"{url}?{urlencode(query)}" if query else url
        response: HttpResponseBase = super().changelist_view(request, extra_context)
        return response


@admin.register(ContactList)
class ContactListAdmin(admin.ModelAdmin):
    list_display = ("name", "description", "subscribers", "unsubscribed", "created_at")
    search_fields = ("name",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ContactList]:
        left = Q(subscription__unsubscribed_at__isnull=False)
        return (
            super()
            .get_queryset(request)
            .annotate(
                subscriber_count=Count("subscription", filter=~left),
                unsubscribed_count=Count("subscription", filter=left),
            )
        )

    @admin.display(description="subscribers", ordering="subscriber_count")
    def subscribers(self, obj: ContactList) -> int:
        return obj.subscriber_count  # type: ignore[attr-defined]

    @admin.display(description="unsubscribed", ordering="unsubscribed_count")
    def unsubscribed(self, obj: ContactList) -> int:
        return obj.unsubscribed_count  # type: ignore[attr-defined]


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    list_display = ("pattern", "source", "reason", "created_at")
    list_filter = ("source",)
    search_fields = ("pattern",)
    change_list_template = "campaigns/import_changelist.html"

    def changelist_view(self, request, extra_context=None):  # type: ignore[no-untyped-def]
        extra_context = extra_context or {}
        if request.user.has_perm("campaigns.add_suppression"):
            extra_context["herald_import_url"] = reverse("campaigns:suppression_import")
        if request.user.has_perm("campaigns.view_suppression"):
            extra_context["herald_export_url"] = reverse("campaigns:suppression_export")
        response: HttpResponseBase = super().changelist_view(request, extra_context)
        return response


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ("name", "subject", "updated_at", "preview_link")
    search_fields = ("name", "subject")

    @admin.display(description="preview")
    def preview_link(self, obj: Template) -> SafeString:
        url = reverse("campaigns:template_preview", args=[obj.pk])
        return format_html('<a href="{}">Preview and test send</a>', url)


class SegmentForm(forms.ModelForm):
    statuses = forms.MultipleChoiceField(
        choices=Contact.Status.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: any status.",
    )

    class Meta:
        model = Segment
        fields = (
            "name",
            "description",
            "statuses",
            "lists",
            "not_lists",
            "conditions",
            "engagement",
        )


@admin.register(Segment)
class SegmentAdmin(admin.ModelAdmin):
    form = SegmentForm
    list_display = ("name", "description", "updated_at")
    search_fields = ("name",)
    filter_horizontal = ("lists", "not_lists")
    readonly_fields = ("contacts_now",)
    fields = (
        "name",
        "description",
        "contacts_now",
        "statuses",
        "lists",
        "not_lists",
        "conditions",
        "engagement",
    )

    @admin.display(description="contacts now")
    def contacts_now(self, obj: Segment) -> str:
        # Counted when the page opens: a segment is a live filter.
        if obj.pk is None:
            return "Counted once saved."
        return f"{segment_count(segment=obj)} contact(s) match today."


_STATUS_BADGE = {
    Campaign.Status.SENDING: "running",
    Campaign.Status.GENERATING: "running",
    Campaign.Status.SCHEDULED: "muted",
    Campaign.Status.COMPLETED: "ok",
    Campaign.Status.PAUSED: "paused",
    Campaign.Status.CANCELLED: "failed",
}


class CampaignForm(forms.ModelForm):
    """A campaign sent through a pool may leave the dispatcher empty: the
    pool's first member is taken (it must be a member anyway)."""

    class Meta:
        model = Campaign
        fields = ("dispatcher", "pool")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "dispatcher" in self.fields:
            self.fields["dispatcher"].required = False

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        pool = cleaned.get("pool")
        if not cleaned.get("dispatcher") and "dispatcher" in self.fields:
            first = pool.members.select_related("dispatcher").first() if pool else None
            if first is None:
                self.add_error("dispatcher", "Choose a dispatcher, or a pool with members.")
            else:
                cleaned["dispatcher"] = first.dispatcher
                self.instance.dispatcher = first.dispatcher
        return cleaned


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    form = CampaignForm
    list_display = (
        "name",
        "status_badge",
        "progress",
        "dispatcher",
        "scheduled_at",
        "completed_at",
        "report_link",
    )
    list_filter = ("status", "kind", "dispatcher")
    search_fields = ("name",)
    filter_horizontal = ("lists", "segments", "exclude_lists", "exclude_segments")
    readonly_fields = (
        "status_badge",
        "paused_reason",
        "progress",
        "started_at",
        "completed_at",
        "created_by",
        "report_link",
    )
    actions = ("schedule_now", "pause", "resume")

    # What a marketer sets; read-only once the campaign has left draft.
    editable_fields = (
        "name",
        "kind",
        "autoresponder_delay",
        "trigger",
        "date_attribute",
        "date_offset_days",
        "template",
        "track_opens",
        "track_clicks",
        "lists",
        "segments",
        "exclude_lists",
        "exclude_segments",
        "only_segment",
        "send_limit",
        "dispatcher",
        "pool",
        "scheduled_at",
    )

    def get_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        if obj is None:
            return list(self.editable_fields)
        return [
            *self.editable_fields,
            "report_link",
            "status_badge",
            "paused_reason",
            "progress",
            "started_at",
            "completed_at",
        ]

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        if obj is not None and obj.status != Campaign.Status.DRAFT:
            return (*self.editable_fields, *self.readonly_fields)
        return self.readonly_fields

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Campaign]:
        queryset = super().get_queryset(request).select_related("dispatcher")
        if request.resolver_match and request.resolver_match.url_name.endswith("changelist"):
            queryset = campaigns_with_counts(queryset)
        return queryset

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Campaign) -> SafeString:
        return format_html(
            '<span class="herald-badge herald-badge--{}" title="{}">{}</span>',
            _STATUS_BADGE.get(obj.status, "muted"),
            obj.paused_reason,
            obj.get_status_display(),
        )

    @admin.display(description="report")
    def report_link(self, obj: Campaign) -> SafeString:
        url = reverse("campaigns:campaign_report", args=[obj.pk])
        return format_html('<a href="{}">Report, actions and preview</a>', url)

    @admin.display(description="progress")
    def progress(self, obj: Campaign) -> SafeString:
        attach_counts([obj])
        return SafeString(
            render_to_string("campaigns/progress.html", {"p": campaign_progress(campaign=obj)})
        )

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("campaigns.pause_campaign")

    @admin.action(description="Schedule selected drafts to send now", permissions=["change"])
    def schedule_now(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        for campaign in queryset:
            try:
                services.campaign_schedule(campaign=campaign, when=campaign.scheduled_at)
            except ValidationError as exc:
                self.message_user(request, f"{campaign}: {exc.messages[0]}", messages.ERROR)
            else:
                self.message_user(request, f"{campaign}: scheduled.", messages.SUCCESS)

    @admin.action(description="Pause selected campaigns", permissions=["pause"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        n = sum(services.campaign_pause(campaign=c) for c in queryset)
        self.message_user(request, f"Paused {n} campaign(s).", messages.SUCCESS)

    @admin.action(description="Resume selected campaigns", permissions=["pause"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Campaign]) -> None:
        n = sum(services.campaign_resume(campaign=c) for c in queryset)
        self.message_user(request, f"Resumed {n} campaign(s).", messages.SUCCESS)


@admin.register(CampaignItem)
class CampaignItemAdmin(admin.ModelAdmin):
    list_display = (
        "campaign",
        "contact",
        "status",
        "attempts",
        "sent_at",
        "smtp_code",
        "possibly_duplicated",
    )
    list_filter = ("status", "possibly_duplicated", "campaign")
    search_fields = ("contact__email",)
    list_select_related = ("campaign", "contact")
    raw_id_fields = ("campaign", "contact", "batch")
    # One count of a filtered million, not two: the total of every campaign's
    # items beside it doubled the page's time (160 ms of a campaign's list).
    show_full_result_count = False

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(MarketingConfiguration)
class MarketingConfigurationAdmin(SingletonAdmin):
    """One page, no list, as the products our users come from have it: the
    footers, and the sizes that shape sending, shown for reference."""

    fieldsets = (
        ("Footers", {"fields": ("text_footer", "html_footer")}),
        ("Sending (read-only)", {"fields": ("campaign_batch_size", "items_page_size")}),
    )
    readonly_fields = ("campaign_batch_size", "items_page_size")
    saved_message = "The marketing configuration was saved."

    @admin.display(description="Campaign batch size")
    def campaign_batch_size(self, obj: MarketingConfiguration) -> str:
        sizes = sorted(set(Dispatcher.objects.values_list("batch_size", flat=True)))
        shown = ", ".join(str(size) for size in sizes) or "no dispatcher yet"
        return f"{shown} (set per dispatcher: “Volume of mails per batch”)"

    @admin.display(description="Items creation page size")
    def items_page_size(self, obj: MarketingConfiguration) -> str:
        return f"{settings.HERALD_ITEMS_PAGE_SIZE} (HERALD_ITEMS_PAGE_SIZE)"
