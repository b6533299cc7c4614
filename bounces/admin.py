from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from smtpservers.oauth import OAuthError, oauth_flow_start

from .models import Bounce, BounceMailbox, BounceRule
from .services import connection_test


@admin.register(BounceMailbox)
class BounceMailboxAdmin(admin.ModelAdmin):
    list_display = ("name", "protocol", "host", "port", "security", "is_active", "status")
    list_filter = ("protocol", "security", "is_active")
    search_fields = ("name", "host", "username")
    actions = ["test_connection"]
    readonly_fields = ("oauth_expires_at", "last_polled_at", "last_checked_at", "last_status")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "name",
                    "protocol",
                    "host",
                    "port",
                    "security",
                    "verify_certificate",
                    "timeout",
                    "poll_interval",
                    "is_active",
                ),
            },
        ),
        ("Folders (IMAP)", {"fields": ("folder", "move_to_folder")}),
        ("Login information", {"fields": ("auth_method", "username", "password")}),
        (
            "OAuth 2.0",
            {
                "fields": (
                    "oauth_provider",
                    "oauth_access_token",
                    "oauth_refresh_token",
                    "oauth_expires_at",
                )
            },
        ),
        ("Last check", {"fields": ("last_polled_at", "last_checked_at", "last_status")}),
    )

    @admin.display(description="Last check", ordering="last_checked_at")
    def status(self, mailbox: BounceMailbox) -> str:
        if mailbox.last_checked_at is None:
            return "Not read yet"
        return f"{mailbox.last_checked_at:%Y-%m-%d %H:%M}: {mailbox.last_status}"

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, **kwargs)
        form.base_fields[
            "port"
        ].help_text = "IMAP: 993 with SSL, 143 otherwise. POP3: 995 with SSL, 110 otherwise."
        return form

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path(
                "<int:pk>/generate-tokens/",
                view(require_POST(self.generate_tokens_view)),
                name="bounces_bouncemailbox_generate_tokens",
            ),
            *super().get_urls(),
        ]

    def generate_tokens_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Off to the provider's consent page; it comes back to the OAuth
        callback of the SMTP servers, which stores the tokens here."""
        mailbox = get_object_or_404(BounceMailbox, pk=pk)
        if not self.has_change_permission(request, mailbox):
            raise PermissionDenied
        try:
            url = oauth_flow_start(server=mailbox, session=request.session)
        except OAuthError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(
                reverse("admin:bounces_bouncemailbox_change", args=[mailbox.pk])
            )
        return HttpResponseRedirect(url)

    @admin.action(description="Test connection", permissions=["change"])
    def test_connection(self, request: HttpRequest, queryset: QuerySet[BounceMailbox]) -> None:
        for mailbox in queryset:
            report = connection_test(mailbox=mailbox)
            level = messages.SUCCESS if report.ok else messages.ERROR
            self.message_user(request, f"{mailbox.name}: {report.message}", level)


@admin.register(BounceRule)
class BounceRuleAdmin(admin.ModelAdmin):
    list_display = ("kind", "count", "period_days", "action")
    list_editable = ("count", "period_days", "action")


@admin.register(Bounce)
class BounceAdmin(admin.ModelAdmin):
    """The record of what came back: read-only."""

    list_display = ("created_at", "kind", "recipient", "status_code", "matched_by", "outcome")
    list_filter = ("kind", "matched_by", "mailbox")
    search_fields = ("recipient", "diagnostic", "message_uid")
    list_select_related = ("mailbox",)
    raw_id_fields = ("item", "campaign", "contact")
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
