from __future__ import annotations

from typing import Any

from django import forms

from .encryption import SecretFormField
from .models import POP_PORTS, GlobalOptions, SmtpServer


class OptionalPortField(forms.IntegerField):
    """Blank means the usual port (set in the form's clean), not a change."""

    def has_changed(self, initial: Any, data: Any) -> bool:
        return data not in (None, "") and super().has_changed(initial, data)


class OptionalSecurityField(forms.TypedChoiceField):
    """Blank means no encryption, like an unticked box, and is not a change."""

    def has_changed(self, initial: Any, data: Any) -> bool:
        return super().has_changed(initial, data or SmtpServer.Security.NONE)


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
            "pop_before_smtp",
            "pop_host",
            "pop_port",
            "pop_security",
            "pop_username",
            "pop_password",
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
        self.fields["pop_port"] = OptionalPortField(
            label=self.fields["pop_port"].label,
            help_text=self.fields["pop_port"].help_text,
            min_value=1,
            max_value=65535,
            required=False,
        )
        # Optional like the rest of POP before SMTP: blank is no encryption.
        self.fields["pop_security"] = OptionalSecurityField(
            label=self.fields["pop_security"].label,
            help_text=self.fields["pop_security"].help_text,
            choices=SmtpServer.Security.choices,
            empty_value=SmtpServer.Security.NONE,
            initial=SmtpServer.Security.NONE,
            required=False,
        )
        self.fields["oauth_access_token"].help_text = (
            "Filled by “Generate tokens”, or paste one. Stored encrypted and never shown; "
            "leave blank to keep it."
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("pop_port") is None and "pop_port" not in self.errors:
            # Optional like the rest of POP before SMTP: blank is the usual port.
            cleaned["pop_port"] = POP_PORTS[cleaned.get("pop_security") or "none"]
        password = cleaned.get("password") or ""
        confirm = cleaned.get("password_confirm") or ""
        if password != confirm:
            self.add_error(
                "password_confirm",
                "The two passwords do not match. Type the same password in both fields.",
            )
        return cleaned


class GlobalOptionsForm(forms.ModelForm):
    """The OAuth 2.0 applications; the client secrets are write-only."""

    class Meta:
        model = GlobalOptions
        fields = [
            "office365_client_id",
            "office365_client_secret",
            "office365_tenant",
            "gmail_client_id",
            "gmail_client_secret",
        ]


class PersonalServerForm(forms.Form):
    smtp_server = forms.ModelChoiceField(
        queryset=SmtpServer.objects.none(),
        required=False,
        label="SMTP server for my test sends",
        empty_label="None: test sends use the dispatcher's server",
        help_text="Only the test sends you make from Herald go through it. Campaigns and "
        "autoresponders always use their dispatcher's server.",
        error_messages={
            "invalid_choice": "That server is not offered as a personal outbound server; "
            "pick one from the list."
        },
    )

    def __init__(self, *args: Any, queryset: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["smtp_server"].queryset = queryset  # type: ignore[attr-defined]
