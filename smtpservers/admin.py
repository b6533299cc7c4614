from django.contrib import admin

from .models import SmtpServer


@admin.register(SmtpServer)
class SmtpServerAdmin(admin.ModelAdmin):
    list_display = ("name", "host", "port", "security", "auth_method", "is_active")
    list_filter = ("security", "auth_method", "is_active")
    search_fields = ("name", "host")
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
                    "timeout",
                    "helo_name",
                    "is_active",
                )
            },
        ),
        ("Login information", {"fields": ("auth_method", "username", "password")}),
    )
