from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from .encryption import EncryptedTextField
from .validators import (
    validate_ca_bundle,
    validate_header_value,
    validate_helo_name,
    validate_host,
    validate_tenant,
)

DEFAULT_PORT = 25
SUGGESTED_PORTS = {"none": 25, "ssl": 465, "starttls": 587}
POP_PORTS = {"none": 110, "ssl": 995, "starttls": 110}


class SmtpServer(models.Model):
    class Security(models.TextChoices):
        NONE = "none", "None"
        SSL = "ssl", "SSL (implicit TLS)"
        STARTTLS = "starttls", "TLS (STARTTLS)"

    class AuthMethod(models.TextChoices):
        NONE = "none", "None"
        CLEAR_TEXT = "clear", "Clear text"
        NTLM = "ntlm", "NTLM"
        OAUTH2 = "oauth2", "OAuth 2.0"

    class OAuthProvider(models.TextChoices):
        OFFICE365 = "office365", "Office 365"
        GMAIL = "gmail", "Gmail"

    name = models.CharField(max_length=100, unique=True)
    host = models.CharField(
        max_length=253,
        validators=[validate_host],
        error_messages={"blank": "Enter the server's host name or IP address."},
    )
    port = models.PositiveIntegerField(
        "SMTP port",
        default=DEFAULT_PORT,
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text="25 by default; usually 465 for SSL and 587 for STARTTLS.",
    )
    security = models.CharField(
        "type of encryption connection",
        max_length=10,
        choices=Security.choices,
        default=Security.NONE,
    )
    verify_certificate = models.BooleanField(
        default=True, help_text="Turn off only for a server whose certificate you trust by hand."
    )
    ca_bundle = models.TextField(
        "CA bundle (PEM)",
        blank=True,
        validators=[validate_ca_bundle],
        help_text="Optional. When set, only these CA certificates are trusted for this "
        "server (e.g. your company's own CA) instead of the system's.",
    )
    timeout = models.PositiveSmallIntegerField(
        "timeout (seconds)",
        default=30,
        validators=[MinValueValidator(1), MaxValueValidator(300)],
        help_text="For connecting and for every command, 1 to 300 seconds.",
    )
    helo_name = models.CharField(
        "HELO/EHLO name",
        max_length=253,
        blank=True,
        validators=[validate_helo_name],
        help_text="The name Herald announces; blank uses this machine's name.",
    )
    auth_method = models.CharField(
        "authentication type", max_length=10, choices=AuthMethod.choices, default=AuthMethod.NONE
    )
    username = models.CharField(
        "SMTP account name",
        max_length=254,
        blank=True,
        validators=[validate_header_value],
        help_text="Whatever the provider wants: a mailbox, DOMAIN\\user for NTLM, "
        "or the literal apikey for SendGrid.",
    )
    password = EncryptedTextField(blank=True, default="")
    allow_insecure_auth = models.BooleanField(
        "allow login without encryption",
        default=False,
        help_text="Send the account name and password even when the connection is not "
        "encrypted (Type of encryption connection: None). Anyone on the network path "
        "can read them.",
    )
    oauth_provider = models.CharField(
        "mail server (OAuth 2.0)", max_length=10, choices=OAuthProvider.choices, blank=True
    )
    oauth_access_token = EncryptedTextField("access token", blank=True, default="")
    oauth_refresh_token = EncryptedTextField("refresh token", blank=True, default="")
    oauth_expires_at = models.DateTimeField("access token expires at", null=True, blank=True)
    pop_before_smtp = models.BooleanField(
        "POP before SMTP",
        default=False,
        help_text="Log in to a POP3 mailbox before each sending session, for servers that "
        "accept mail only from addresses that have just read their mail.",
    )
    pop_host = models.CharField("POP3 host", max_length=253, blank=True, validators=[validate_host])
    pop_port = models.PositiveIntegerField(
        "POP3 port",
        default=POP_PORTS["none"],
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text="110 by default (also with STLS); usually 995 with SSL.",
    )
    pop_security = models.CharField(
        "POP3 type of encryption connection",
        max_length=10,
        choices=Security.choices,
        default=Security.NONE,
        help_text="SSL: implicit TLS from the first byte (usually port 995). TLS: the "
        "POP3 STLS command upgrades a plain connection (usually port 110). Verified "
        "like the SMTP connection (CA bundle, verification setting).",
    )
    pop_username = models.CharField(
        "POP3 account name", max_length=254, blank=True, validators=[validate_header_value]
    )
    pop_password = EncryptedTextField("POP3 password", blank=True, default="")
    is_active = models.BooleanField("active", default=True)
    personal_use = models.BooleanField(
        "offer as a personal outbound server",
        default=False,
        help_text="Users may pick this server for the test sends they make from the UI "
        "(My outbound server). Campaigns and autoresponders always use their dispatcher's "
        "server.",
    )
    connection_ok = models.BooleanField("connection OK", null=True, editable=False)
    connection_status = models.TextField(blank=True, editable=False)
    connection_checked_at = models.DateTimeField("checked at", null=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # For smtpservers.oauth: what Office 365 is asked for, and what stops
    # while the token cannot be refreshed.
    oauth_office365_scopes = ["https://outlook.office.com/SMTP.Send"]
    oauth_unavailable = "Dispatchers using this server cannot send until it is fixed."

    class Meta:
        ordering = ["name"]
        verbose_name = "SMTP server"

    def __str__(self) -> str:
        return self.name

    @property
    def sends_credentials(self) -> bool:
        return self.auth_method != self.AuthMethod.NONE

    @property
    def insecure_auth(self) -> bool:
        """Credentials would cross the network in the clear."""
        return self.sends_credentials and self.security == self.Security.NONE

    def clean(self) -> None:
        errors: dict[str, str] = {}
        method = self.auth_method
        if method in (self.AuthMethod.CLEAR_TEXT, self.AuthMethod.NTLM, self.AuthMethod.OAUTH2):
            if not self.username:
                errors["username"] = (
                    "Enter the SMTP account name (the mailbox for OAuth 2.0); this "
                    "authentication type needs one."
                )
        if method in (self.AuthMethod.CLEAR_TEXT, self.AuthMethod.NTLM) and not self.password:
            errors["password"] = "Enter the password; this authentication type needs one."
        if method == self.AuthMethod.OAUTH2 and not self.oauth_provider:
            errors["oauth_provider"] = "Choose the mail server: Office 365 or Gmail."
        if method != self.AuthMethod.OAUTH2 and self.oauth_provider:
            errors["oauth_provider"] = (
                "The mail server is only for OAuth 2.0; leave it blank or choose "
                "OAuth 2.0 as the authentication type."
            )
        pop_tls = self.pop_before_smtp and self.pop_security != self.Security.NONE
        if self.ca_bundle.strip() and self.security == self.Security.NONE and not pop_tls:
            errors["ca_bundle"] = (
                "A CA bundle is only used with SSL or STARTTLS (of SMTP or of POP before "
                "SMTP); choose one of them or clear the bundle."
            )
        if self.pop_before_smtp:
            if not self.pop_host:
                errors["pop_host"] = "Enter the POP3 host; POP before SMTP needs one."
            if not self.pop_username:
                errors["pop_username"] = "Enter the POP3 account name; POP before SMTP needs one."
            if not self.pop_password:
                errors["pop_password"] = "Enter the POP3 password; POP before SMTP needs one."
        if errors:
            raise ValidationError(errors)

    @property
    def uses_oauth2(self) -> bool:
        return self.auth_method == self.AuthMethod.OAUTH2 and bool(self.oauth_provider)


class GlobalOptions(models.Model):
    """Settings made once for every server: the OAuth 2.0 applications
    Herald is registered as with Microsoft and Google. One row only."""

    office365_client_id = models.CharField(
        "Office 365 client ID",
        max_length=200,
        blank=True,
        validators=[validate_header_value],
        help_text="The Application (client) ID of the app registered in Microsoft Entra ID.",
    )
    office365_client_secret = EncryptedTextField("Office 365 client secret", blank=True, default="")
    office365_tenant = models.CharField(
        "Office 365 tenant",
        max_length=200,
        blank=True,
        default="organizations",
        validators=[validate_tenant],
        help_text="The directory (tenant) ID or domain, e.g. contoso.onmicrosoft.com; "
        "“organizations” accepts any work account.",
    )
    gmail_client_id = models.CharField(
        "Gmail client ID",
        max_length=200,
        blank=True,
        validators=[validate_header_value],
        help_text="The OAuth client ID (…apps.googleusercontent.com) from Google Cloud.",
    )
    gmail_client_secret = EncryptedTextField("Gmail client secret", blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = verbose_name_plural = "Global options"
        constraints = [
            models.CheckConstraint(condition=models.Q(pk=1), name="globaloptions_singleton")
        ]

    def __str__(self) -> str:
        return "Global options"

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.pk = 1  # the one row
        super().save(*args, **kwargs)

    @classmethod
    def load(cls) -> GlobalOptions:
        options, _ = cls.objects.get_or_create(pk=1)
        return options


class PersonalServer(models.Model):
    """The SMTP server a user picked for the test sends they make from the UI
    (Custom Outbound Email in the products our users come from). Campaigns
    and autoresponders never read it."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="personal_server"
    )
    smtp_server = models.ForeignKey(
        SmtpServer, on_delete=models.CASCADE, related_name="personal_users"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "personal outbound server"

    def __str__(self) -> str:
        return f"{self.user} → {self.smtp_server}"
