from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from .models import Dispatcher
from .services import dispatcher_pause, dispatcher_resume


@admin.register(Dispatcher)
class DispatcherAdmin(admin.ModelAdmin):
    list_display = ("name", "type", "server_name", "messages_per_hour", "connections", "state")
    list_select_related = ("smtp_server",)
    list_filter = ("type", "delivery_mode", "is_enabled")
    search_fields = ("name", "server_name", "from_email")
    readonly_fields = ("worker_command", "state")
    actions = ("pause", "resume")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "name",
                    "server_name",
                    "worker_command",
                    "type",
                    "is_enabled",
                    "state",
                )
            },
        ),
        (
            "Sending",
            {
                "fields": (
                    "messages_per_hour",
                    "batch_size",
                    "connections",
                    "delivery_mode",
                    "smtp_server",
                    "pickup_directory",
                )
            },
        ),
        ("Login information", {"fields": ("from_email", "from_name", "reply_to")}),
    )

    @admin.display(description="state")
    def state(self, obj: Dispatcher) -> str:
        if not obj.is_enabled:
            badge, label, why = "paused", "Paused", obj.paused_reason
        elif obj.blocked_reason:
            badge, label, why = "failed", "Cannot send", obj.blocked_reason
        else:
            badge, label, why = "ok", "Enabled", obj.last_error
        return format_html(
            '<span class="herald-badge herald-badge--{}">{}</span> '
            '<span class="herald-sub">{}</span>',
            badge,
            label,
            why,
        )

    @admin.display(description="worker command")
    def worker_command(self, obj: Dispatcher) -> str:
        if not obj.pk:
            return "Shown once the dispatcher is saved."
        return f"celery -A config worker -Q {obj.queue} --hostname {obj.server_name}@%h"

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("dispatchers.pause_dispatcher")

    @admin.action(description="Pause selected dispatchers", permissions=["pause"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Dispatcher]) -> None:
        reason = f"Paused by {request.user.get_username()}"
        n = sum(dispatcher_pause(dispatcher=d, reason=reason) for d in queryset)
        self.message_user(request, f"Paused {n} dispatcher(s).", messages.SUCCESS)

    @admin.action(description="Resume selected dispatchers", permissions=["pause"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Dispatcher]) -> None:
        n = sum(dispatcher_resume(dispatcher=d) for d in queryset)
        self.message_user(request, f"Resumed {n} dispatcher(s).", messages.SUCCESS)
