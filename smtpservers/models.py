from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from .encryption import EncryptedTextField
from .validators import (
    validate_ca_bundle,
    validate_header_value,
    validate_helo_name,
    validate_host,
)

DEFAULT_PORT = 25
SUGGESTED_PORTS = {"none": 25, "ssl": 465, "starttls": 587}


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
    is_active = models.BooleanField("active", default=True)
    connection_ok = models.BooleanField("connection OK", null=True, editable=False)
    connection_status = models.TextField(blank=True, editable=False)
    connection_checked_at = models.DateTimeField("checked at", null=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

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
        if self.ca_bundle.strip() and self.security == self.Security.NONE:
            errors["ca_bundle"] = (
                "A CA bundle is only used with SSL or STARTTLS; choose one of them or "
                "clear the bundle."
            )
        if errors:
            raise ValidationError(errors)
