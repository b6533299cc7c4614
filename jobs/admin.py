from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from .models import JobAction, JobRun, Notification


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
