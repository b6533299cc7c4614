from __future__ import annotations

from typing import Any

from django import forms

from .encryption import SecretFormField
from .models import SmtpServer


class SmtpServerForm(forms.ModelForm):
    """The admin form: secrets write-only, the password typed twice."""

    password_confirm = SecretFormField(
        label="Confirm password",
        help_text="Type the new password again. Leave both blank to keep the stored one.",
    )

    class Meta:
        model = SmtpServer
        fields = [
            "name",
            "host",
            "port",
            "security",
            "verify_certificate",
            "ca_bundle",
            "timeout",
            "helo_name",
            "is_active",
            "auth_method",
            "username",
            "password",
            "password_confirm",
            "allow_insecure_auth",
            "oauth_provider",
            "oauth_access_token",
            "oauth_refresh_token",
        ]
        error_messages = {
            "host": {"required": "Enter the server's host name or IP address."},
            "port": {"required": "Enter the port (25 by default)."},
            "timeout": {"required": "Enter the timeout in seconds, 1 to 300."},
        }
        widgets = {
            "ca_bundle": forms.Textarea(
                attrs={"rows": 4, "placeholder": "-----BEGIN CERTIFICATE-----"}
            ),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["port"].widget.attrs.update({"data-default-port": "25"})
        self.fields["oauth_access_token"].help_text = (
            "Filled by “Generate tokens”, or paste one. Stored encrypted and never shown; "
            "leave blank to keep it."
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        password = cleaned.get("password") or ""
        confirm = cleaned.get("password_confirm") or ""
        if password != confirm:
            self.add_error(
                "password_confirm",
                "The two passwords do not match. Type the same password in both fields.",
            )
        return cleaned
