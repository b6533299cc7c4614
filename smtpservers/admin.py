from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from accounts.singleton import SingletonAdmin

from .forms import GlobalOptionsForm, SmtpServerForm
from .models import POP_PORTS, SUGGESTED_PORTS, GlobalOptions, SmtpServer
from .oauth import OAuthError, oauth_flow_start, redirect_uri
from .services import connection_test, server_duplicate, server_users


@admin.register(SmtpServer)
class SmtpServerAdmin(admin.ModelAdmin):
    form = SmtpServerForm
    change_form_template = "smtpservers/change_form.html"
    list_display = (
        "name",
        "host",
        "port",
        "security",
        "auth_method",
        "is_active",
        "connection",
    )
    list_filter = ("security", "auth_method", "is_active", "connection_ok")
    search_fields = ("name", "host")
    actions = ["test_connection", "duplicate"]
    readonly_fields = ("oauth_expires_at", "connection")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "name",
                    "host",
                    "port",
                    "security",
                    "verify_certificate",
                    "ca_bundle",
                    "timeout",
                    "helo_name",
                    "is_active",
                    "personal_use",
                )
            },
        ),
        (
            "Login information",
            {
                "fields": (
                    "auth_method",
                    "username",
                    "password",
                    "password_confirm",
                    "allow_insecure_auth",
                )
            },
        ),
        (
            "OAuth 2.0",
            {
                "classes": ("herald-oauth",),
                "fields": (
                    "oauth_provider",
                    "oauth_access_token",
                    "oauth_refresh_token",
                    "oauth_expires_at",
                ),
            },
        ),
        (
            "POP before SMTP",
            {
                "classes": ("herald-pop",),
                "fields": (
                    "pop_before_smtp",
                    "pop_host",
                    "pop_port",
                    "pop_security",
                    "pop_username",
                    "pop_password",
                ),
            },
        ),
        ("Connection status", {"fields": ("connection",)}),
    )

    class Media:
        js = ("smtpservers/server_form.js",)

    @admin.display(description="Connection", ordering="connection_checked_at")
    def connection(self, server: SmtpServer) -> str:
        if server.connection_checked_at is None:
            return "Not tested yet"
        label = "OK" if server.connection_ok else "Failed"
        return format_html(
            '<span class="herald-connection herald-connection-{}" title="{}">{}</span> '
            "<small>{}</small>",
            "ok" if server.connection_ok else "failed",
            server.connection_status,
            label if server.connection_ok else f"{label}: {server.connection_status}",
            server.connection_checked_at.strftime("%Y-%m-%d %H:%M"),
        )

    # --- actions ---------------------------------------------------------------

    @admin.action(description="Test connection", permissions=["change"])
    def test_connection(self, request: HttpRequest, queryset: QuerySet[SmtpServer]) -> None:
        for server in queryset:
            self._report(request, server)

    @admin.action(description="Duplicate", permissions=["add"])
    def duplicate(self, request: HttpRequest, queryset: QuerySet[SmtpServer]) -> None:
        for server in queryset:
            copy = server_duplicate(server=server)
            self.message_user(
                request,
                f"Created “{copy.name}” (inactive); review it and tick Active to use it.",
                messages.SUCCESS,
            )

    def _report(self, request: HttpRequest, server: SmtpServer) -> None:
        report = connection_test(server=server)
        level = messages.SUCCESS if report.ok else messages.ERROR
        self.message_user(request, f"{server.name}: {report.message}", level)

    # --- per-server buttons ------------------------------------------------------

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        return [
            path(
                "<int:pk>/test-connection/",
                view(require_POST(self.test_connection_view)),
                name="smtpservers_smtpserver_test",
            ),
            path(
                "<int:pk>/duplicate/",
                view(require_POST(self.duplicate_view)),
                name="smtpservers_smtpserver_duplicate",
            ),
            path(
                "<int:pk>/generate-tokens/",
                view(require_POST(self.generate_tokens_view)),
                name="smtpservers_smtpserver_generate_tokens",
            ),
            path(
                "<int:pk>/deactivate/",
                view(require_POST(self.deactivate_view)),
                name="smtpservers_smtpserver_deactivate",
            ),
            *super().get_urls(),
        ]

    def _server(self, request: HttpRequest, pk: int, permission: str) -> SmtpServer:
        server = get_object_or_404(SmtpServer, pk=pk)
        if permission == "add":
            allowed = self.has_add_permission(request)
        else:
            allowed = getattr(self, f"has_{permission}_permission")(request, server)
        if not allowed:
            raise PermissionDenied
        return server

    def _change_url(self, server: SmtpServer) -> str:
        return reverse("admin:smtpservers_smtpserver_change", args=[server.pk])

    def test_connection_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        server = self._server(request, pk, "change")
        self._report(request, server)
        return HttpResponseRedirect(self._change_url(server))

    def duplicate_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        server = self._server(request, pk, "add")
        copy = server_duplicate(server=server)
        self.message_user(
            request,
            f"This is a copy of “{server.name}”, secrets included. It stays inactive until "
            "you tick Active and save.",
            messages.SUCCESS,
        )
        return HttpResponseRedirect(self._change_url(copy))

    def generate_tokens_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Off to the provider's consent page; it comes back to oauth_callback."""
        server = self._server(request, pk, "change")
        try:
            url = oauth_flow_start(server=server, session=request.session)
        except OAuthError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(self._change_url(server))
        return HttpResponseRedirect(url)

    def deactivate_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        server = self._server(request, pk, "change")
        SmtpServer.objects.filter(pk=server.pk).update(is_active=False)
        self.message_user(
            request,
            f"“{server.name}” is inactive: the dispatchers using it stop sending.",
            messages.SUCCESS,
        )
        return HttpResponseRedirect(self._change_url(server))

    # --- delete ----------------------------------------------------------------

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict | None = None
    ) -> HttpResponse:
        server = self.get_object(request, object_id)
        if server is not None and self.has_delete_permission(request, server):
            users = server_users(server=server)
            if users:
                context = {
                    **self.admin_site.each_context(request),
                    "opts": self.opts,
                    "server": server,
                    "users": users,
                    "title": "Cannot delete this SMTP server",
                    "can_change": self.has_change_permission(request, server),
                }
                return TemplateResponse(
                    request, "smtpservers/delete_refused.html", context, status=409
                )
        return super().delete_view(request, object_id, extra_context)

    # --- the form --------------------------------------------------------------

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any
    ) -> HttpResponse:
        context["suggested_ports"] = SUGGESTED_PORTS
        context["pop_ports"] = POP_PORTS
        return super().render_change_form(request, context, *args, **kwargs)

    def save_model(self, request: HttpRequest, obj: SmtpServer, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if obj.security != SmtpServer.Security.NONE and not obj.verify_certificate:
            self.message_user(
                request,
                f"Certificate verification is off for “{obj.name}”: anyone on the network "
                "path can pose as this server and read the mail and the password.",
                messages.WARNING,
            )
        if obj.insecure_auth and obj.allow_insecure_auth:
            self.message_user(
                request,
                f"“{obj.name}” sends its credentials over an unencrypted connection.",
                messages.WARNING,
            )
        elif obj.insecure_auth:
            self.message_user(
                request,
                f"“{obj.name}” will refuse to log in: its credentials would travel "
                "unencrypted. Choose SSL or STARTTLS, or tick “Allow login without "
                "encryption”.",
                messages.WARNING,
            )


@admin.register(GlobalOptions)
class GlobalOptionsAdmin(SingletonAdmin):
    """One page, no list: the changelist opens the single row."""

    form = GlobalOptionsForm
    change_form_template = "smtpservers/globaloptions_change_form.html"
    saved_message = "The global options were saved."
    fieldsets = (
        (
            "Modern Authentication Options",
            {
                "fields": (
                    "office365_client_id",
                    "office365_client_secret",
                    "office365_tenant",
                    "gmail_client_id",
                    "gmail_client_secret",
                ),
            },
        ),
    )

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "title": "Global options",
            "subtitle": None,
            "herald_redirect_uri": redirect_uri(),
        }
        return super().change_view(request, object_id, form_url, extra_context)
