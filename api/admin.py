"""API tokens in the admin: created here (the token is shown once, in the
confirmation message), revoked here. Someone who may not change every
token sees and creates only their own."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "user", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "user__username")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    actions = ("revoke",)

    def _manages_all(self, request: HttpRequest) -> bool:
        return request.user.has_perm("api.change_apitoken")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = ["name"]
        if self._manages_all(request):
            fields.append("user")
        return fields + (list(self.readonly_fields) if obj else [])

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"user": request.user.pk}

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # A token is never edited, only revoked: a new name needs a new token.
        return ("name", "user", *self.readonly_fields) if obj else ()

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiToken]:
        queryset = super().get_queryset(request).select_related("user")
        return queryset if self._manages_all(request) else queryset.filter(user=request.user)

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            return
        user = obj.user if self._manages_all(request) and obj.user_id else request.user
        token, raw = services.token_create(user=user, name=obj.name)
        obj.pk = token.pk
        obj.__dict__.update(token.__dict__)
        messages.warning(
            request,
            f"The token for {token.name}: {raw} — copy it now; it is not shown again.",
        )

    @admin.action(description="Revoke selected tokens", permissions=["delete"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = sum(services.token_revoke(token=t) for t in queryset)
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)
