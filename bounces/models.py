from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from campaigns.models import Campaign, CampaignItem, Contact
from smtpservers.encryption import EncryptedTextField
from smtpservers.models import SmtpServer
from smtpservers.validators import validate_header_value, validate_host


def validate_folder(value: str) -> None:
    """An IMAP folder name: printable, no line breaks (they would end the
    IMAP command), no wildcards (they would match other folders)."""
    validate_header_value(value)
    if any(ch in value for ch in "*%") or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValidationError(
            "A folder name cannot contain control characters, * or %.", code="folder"
        )
    if value != value.strip():
        raise ValidationError("A folder name cannot start or end with spaces.", code="folder")


class BounceMailbox(models.Model):
    """A dedicated mailbox the process-bounce-email job reads and empties."""

    class Protocol(models.TextChoices):
        IMAP = "imap", "IMAP"
        POP3 = "pop3", "POP3"

    class Security(models.TextChoices):
        NONE = "none", "None"
        SSL = "ssl", "SSL (implicit TLS)"
        STARTTLS = "starttls", "TLS (STLS / STARTTLS)"

    class AuthMethod(models.TextChoices):
        PASSWORD = "password", "Password"
        OAUTH2 = "oauth2", "OAuth 2.0 (XOAUTH2)"

    name = models.CharField(max_length=100, unique=True)
    protocol = models.CharField(max_length=8, choices=Protocol.choices, default=Protocol.POP3)
    host = models.CharField(max_length=253, validators=[validate_host])
    port = models.PositiveIntegerField(
        default=995, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    security = models.CharField(
        "type of encryption connection",
        max_length=10,
        choices=Security.choices,
        default=Security.SSL,
    )
    verify_certificate = models.BooleanField(
        default=True, help_text="Turn off only for a server whose certificate you trust by hand."
    )
    timeout = models.PositiveSmallIntegerField(
        "timeout (seconds)", default=30, validators=[MinValueValidator(1), MaxValueValidator(300)]
    )
    folder = models.CharField(
        max_length=200,
        default="INBOX",
        validators=[validate_folder],
        help_text="IMAP only: the folder the bounces arrive in.",
    )
    move_to_folder = models.CharField(
        "after processing, move to folder",
        max_length=200,
        blank=True,
        validators=[validate_folder],
        help_text="IMAP only. Blank: each processed message is deleted. A folder name: "
        "processed messages are moved there instead (it is created if missing).",
    )
    poll_interval = models.PositiveIntegerField(
        "poll interval (minutes)",
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(1440)],
        help_text="The mailbox is read when this long has passed since it was last read.",
    )
    auth_method = models.CharField(
        "authentication type",
        max_length=10,
        choices=AuthMethod.choices,
        default=AuthMethod.PASSWORD,
    )
    username = models.CharField(max_length=254, validators=[validate_header_value])
    password = EncryptedTextField(blank=True, default="")
    oauth_provider = models.CharField(
        "mail server (OAuth 2.0)",
        max_length=10,
        choices=SmtpServer.OAuthProvider.choices,
        blank=True,
        help_text="Save, then “Generate tokens”. Generate them again after changing the "
        "protocol: Office 365 grants IMAP and POP3 separately.",
    )
    oauth_access_token = EncryptedTextField("access token", blank=True, default="")
    oauth_refresh_token = EncryptedTextField("refresh token", blank=True, default="")
    oauth_expires_at = models.DateTimeField(
        "access token expires at", null=True, blank=True, editable=False
    )
    is_active = models.BooleanField("active", default=True)
    last_polled_at = models.DateTimeField("last read at", null=True, blank=True, editable=False)
    last_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_status = models.CharField(max_length=500, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "bounce mailbox"
        verbose_name_plural = "bounce mailboxes"

    # For smtpservers.oauth, which refreshes the tokens of mailboxes too.
    oauth_unavailable = "Bounces in this mailbox are not read until it is fixed."

    def __str__(self) -> str:
        return self.name

    @property
    def uses_oauth2(self) -> bool:
        return self.auth_method == self.AuthMethod.OAUTH2 and bool(self.oauth_provider)

    @property
    def oauth_office365_scopes(self) -> list[str]:
        if self.protocol == self.Protocol.IMAP:
            return ["https://outlook.office.com/IMAP.AccessAsUser.All"]
        return ["https://outlook.office.com/POP.AccessAsUser.All"]

    def clean(self) -> None:
        if self.auth_method == self.AuthMethod.OAUTH2 and not self.oauth_provider:
            raise ValidationError(
                {"oauth_provider": "Choose the mail server: Office 365 or Gmail."}
            )
        if self.auth_method != self.AuthMethod.OAUTH2 and self.oauth_provider:
            raise ValidationError(
                {
                    "oauth_provider": "The mail server is only for OAuth 2.0; leave it blank "
                    "or choose OAuth 2.0 as the authentication type."
                }
            )
        if self.protocol == self.Protocol.POP3 and self.move_to_folder:
            raise ValidationError(
                {"move_to_folder": "POP3 has no folders: leave this blank, or choose IMAP."}
            )
        if self.move_to_folder and self.move_to_folder == self.folder:
            raise ValidationError(
                {"move_to_folder": "Choose another folder than the one the bounces are read from."}
            )


class Kind(models.TextChoices):
    HARD = "hard", "Hard bounce"
    SOFT = "soft", "Soft bounce"
    COMPLAINT = "complaint", "Complaint"
    UNKNOWN = "unknown", "Unknown bounce"
    IGNORED = "ignored", "Ignored (auto-reply, delay notice)"
    UNSUBSCRIBE = "unsubscribe", "Unsubscribe request (mailto)"


class Bounce(models.Model):
    """One event read from a bounce mailbox: a failed recipient of a
    delivery report, a complaint, or a message recorded only so it can be
    deleted (an auto-reply). Unique per mailbox message and recipient, so
    reading the same message twice never records it twice."""

    mailbox = models.ForeignKey(
        BounceMailbox, null=True, on_delete=models.SET_NULL, related_name="bounces"
    )
    # The email service provider whose webhook reported it; blank for mail
    # read from a bounce mailbox.
    provider = models.CharField(max_length=32, blank=True)
    # The mailbox message (UIDL or digest) or the provider's event id.
    message_uid = models.CharField("mailbox message or provider event id", max_length=255)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    recipient = models.CharField(max_length=254, blank=True)
    status_code = models.CharField(max_length=16, blank=True)
    action = models.CharField(max_length=16, blank=True)
    diagnostic = models.TextField(blank=True)
    subject = models.CharField(max_length=255, blank=True)
    matched_by = models.CharField(max_length=16, blank=True)
    outcome = models.CharField(max_length=100, blank=True)
    item = models.ForeignKey(
        CampaignItem, null=True, blank=True, on_delete=models.SET_NULL, related_name="bounces"
    )
    campaign = models.ForeignKey(
        Campaign, null=True, blank=True, on_delete=models.SET_NULL, related_name="bounces"
    )
    contact = models.ForeignKey(
        Contact, null=True, blank=True, on_delete=models.SET_NULL, related_name="bounces"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["mailbox", "message_uid", "recipient"], name="bounce_unique_per_message"
            ),
            # Provider webhook events have no mailbox (and NULLs are distinct
            # in the constraint above): one row per provider event.
            models.UniqueConstraint(
                fields=["provider", "message_uid", "recipient"],
                condition=~models.Q(provider=""),
                name="bounce_unique_per_event",
            ),
        ]
        indexes = [models.Index(fields=["contact", "kind", "created_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.recipient or self.message_uid}"


class BounceRule(models.Model):
    """What to do once a contact has bounced ``count`` times of a kind
    within ``period_days`` (listmonk's {type: count -> action})."""

    class Action(models.TextChoices):
        NONE = "none", "Record only"
        SUPPRESS = "suppress", "Suppress the address"
        SUPPRESS_UNSUBSCRIBE = "suppress_unsubscribe", "Suppress and unsubscribe"

    kind = models.CharField(
        max_length=10,
        unique=True,
        choices=[(k.value, k.label) for k in Kind if k not in (Kind.IGNORED, Kind.UNSUBSCRIBE)],
    )
    count = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    period_days = models.PositiveSmallIntegerField(
        "within (days)", default=30, validators=[MinValueValidator(1)]
    )
    action = models.CharField(max_length=24, choices=Action.choices, default=Action.SUPPRESS)

    class Meta:
        ordering = ["kind"]

    def __str__(self) -> str:
        return (
            f"{self.get_kind_display()} × {self.count} within {self.period_days} days: "
            f"{self.get_action_display()}"
        )
