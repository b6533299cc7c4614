from django.contrib import admin

from .models import JobRun


@admin.register(JobRun)
class JobRunAdmin(admin.ModelAdmin):
    list_display = ("job", "started_at", "duration", "items_processed", "outcome", "worker")
    list_filter = ("job", "outcome")
    date_hierarchy = "started_at"

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False  # runs are recorded by the jobs themselves

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False
