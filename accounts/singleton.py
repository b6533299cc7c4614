"""An admin page for a one-row settings model (Global options, Marketing
configuration): no list, no add, no delete; the list opens the row."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Model
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse


class SingletonAdmin(admin.ModelAdmin):
    """For a model with a ``load()`` classmethod that returns its one row."""

    saved_message = "Saved."

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the row is made on first visit

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        row = self.model.load()  # type: ignore[attr-defined]
        opts = self.model._meta
        return HttpResponseRedirect(
            reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[row.pk])
        )

    def response_change(self, request: HttpRequest, obj: Model) -> HttpResponse:
        self.message_user(request, self.saved_message, messages.SUCCESS)
        return HttpResponseRedirect(request.path)
