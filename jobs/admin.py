from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from . import services
from .models import JobAction, JobRun, Notification, SupportToken


@admin.register(JobRun)
class JobRunAdmin(admin.ModelAdmin):
    list_display = ("job", "started_at", "duration", "items_processed", "outcome", "worker")
    list_filter = ("job", "outcome")
    date_hierarchy = "started_at"

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False  # runs are recorded by the jobs themselves

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("title", "level", "occurrences", "created_at", "updated_at", "resolved_at")
    list_filter = ("level", ("resolved_at", admin.EmptyFieldListFilter))
    search_fields = ("title", "message")
    readonly_fields = (
        "key",
        "level",
        "title",
        "message",
        "occurrences",
        "created_at",
        "updated_at",
        "resolved_at",
    )
    actions = ("resolve",)

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False  # raised by Herald itself

    @admin.action(description="Mark selected notifications as resolved", permissions=["change"])
    def resolve(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        n = queryset.filter(resolved_at__isnull=True).update(resolved_at=timezone.now())
        self.message_user(request, f"Resolved {n} notification(s).")


@admin.register(JobAction)
class JobActionAdmin(admin.ModelAdmin):
    """The audit of the job manager: read-only, written by its services."""

    list_display = ("at", "username", "action", "target", "detail")
    list_filter = ("action",)
    search_fields = ("username", "target", "detail")
    date_hierarchy = "at"

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(SupportToken)
class SupportTokenAdmin(admin.ModelAdmin):
    """Tokens for the troubleshooting endpoint: made here (the token is
    shown once, in the confirmation message), revoked here, never edited."""

    list_display = ("name", "prefix", "created_by", "created_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name", "prefix")
    readonly_fields = ("prefix", "created_by", "created_at", "last_used_at", "revoked_at")
    actions = ("revoke",)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["name", *self.readonly_fields] if obj else ["name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ("name", *self.readonly_fields) if obj else ()

    def save_model(self, request: HttpRequest, obj: SupportToken, form: Any, change: bool) -> None:
        if change:
            return
        token, raw = services.support_token_create(name=obj.name, user=request.user)
        obj.pk = token.pk
        obj.__dict__.update(token.__dict__)
        url = request.build_absolute_uri(reverse("troubleshooting"))
        messages.warning(
            request,
            f"The token for {token.name}: {raw} — copy it now; it is not shown again. "
            f"Support staff send it as “Authorization: Bearer <token>” to {url}.",
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoked, not deleted: the record of who had access stays

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[SupportToken]) -> None:
        revoked = sum(services.support_token_revoke(token=t) for t in queryset)
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)
