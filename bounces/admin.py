from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import Bounce, BounceMailbox, BounceRule
from .services import connection_test


@admin.register(BounceMailbox)
class BounceMailboxAdmin(admin.ModelAdmin):
    list_display = ("name", "protocol", "host", "port", "security", "is_active", "status")
    list_filter = ("protocol", "security", "is_active")
    search_fields = ("name", "host", "username")
    actions = ["test_connection"]
    readonly_fields = ("last_polled_at", "last_checked_at", "last_status")
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
        ("Login information", {"fields": ("username", "password")}),
        ("Last check", {"fields": ("last_polled_at", "last_checked_at", "last_status")}),
    )

    @admin.display(description="Last check", ordering="last_checked_at")
    def status(self, mailbox: BounceMailbox) -> str:
        if mailbox.last_checked_at is None:
            return "Not read yet"
        return f"{mailbox.last_checked_at:%Y-%m-%d %H:%M}: {mailbox.last_status}"

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
