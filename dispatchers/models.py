import re

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from smtpservers.models import SmtpServer
from smtpservers.validators import validate_header_value

_COMPUTER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def validate_server_name(value: str) -> None:
    if "." in value:
        raise ValidationError(
            "Enter the computer name (e.g. mailer1), not its fully qualified domain name.",
            code="fqdn",
        )
    if not _COMPUTER_NAME.match(value):
        raise ValidationError(
            "A computer name has only letters, digits and hyphens, and no spaces.",
            code="invalid",
        )


class Dispatcher(models.Model):
    class Type(models.TextChoices):
        EMAIL = "EMAIL", "EMAIL"
        SMS = "SMS", "SMS"

    class DeliveryMode(models.TextChoices):
        SMTP = "smtp", "SMTP relay"
        PICKUP = "pickup", "Local outbox (save as .eml files)"

    name = models.CharField("dispatcher name", max_length=100, unique=True)
    server_name = models.CharField(
        "dispatcher server name",
        max_length=63,
        validators=[validate_server_name],
        help_text="The computer the dispatcher runs on: its outbound work goes to that "
        "computer's worker queue.",
    )
    type = models.CharField(
        "dispatcher type", max_length=5, choices=Type.choices, default=Type.EMAIL
    )
    is_enabled = models.BooleanField("enable dispatcher", default=True)
    paused_reason = models.CharField(max_length=255, blank=True)
    messages_per_hour = models.PositiveIntegerField(
        "messages dispatched per hour", default=3600, validators=[MinValueValidator(1)]
    )
    batch_size = models.PositiveIntegerField(
        "volume of mails per batch", default=100, validators=[MinValueValidator(1)]
    )
    connections = models.PositiveSmallIntegerField(
        "parallel connections",
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(50)],
        help_text="How many SMTP sessions one batch sends over at once, each reused.",
    )
    # Batches in a row that could not reach or log in to the server; at
    # HERALD_DISPATCHER_MAX_FAILURES the dispatcher pauses itself.
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    last_error = models.CharField(max_length=500, blank=True, editable=False)
    delivery_mode = models.CharField(
        max_length=10, choices=DeliveryMode.choices, default=DeliveryMode.SMTP
    )
    smtp_server = models.ForeignKey(
        SmtpServer,
        verbose_name="mail server name",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="dispatchers",
    )
    pickup_directory = models.CharField(
        max_length=500, blank=True, help_text="For the local outbox: where .eml files are written."
    )
    from_email = models.EmailField("e-mail address", blank=True, validators=[validate_header_value])
    from_name = models.CharField(
        "sender name", max_length=200, blank=True, validators=[validate_header_value]
    )
    reply_to = models.EmailField(blank=True, validators=[validate_header_value])
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [("pause_dispatcher", "Can pause and resume dispatchers")]

    def __str__(self) -> str:
        return self.name

    @property
    def queue(self) -> str:
        """The Celery queue a worker on ``server_name`` consumes."""
        return f"dispatch.{self.server_name.lower()}"

    @property
    def blocked_reason(self) -> str:
        """Why an enabled dispatcher cannot send right now ("" if it can)."""
        if (
            self.delivery_mode == self.DeliveryMode.SMTP
            and self.smtp_server is not None
            and not self.smtp_server.is_active
        ):
            return f"SMTP server “{self.smtp_server.name}” is inactive"
        return ""

    def clean(self) -> None:
        if self.type == self.Type.EMAIL:
            if not self.from_email:
                raise ValidationError({"from_email": "An EMAIL dispatcher needs a sender address."})
            if self.delivery_mode == self.DeliveryMode.SMTP and not self.smtp_server_id:
                raise ValidationError({"smtp_server": "Choose the SMTP server to relay through."})
            if self.delivery_mode == self.DeliveryMode.PICKUP and not self.pickup_directory:
                raise ValidationError(
                    {"pickup_directory": "Give the folder to write .eml files to."}
                )


class RateUsage(models.Model):
    """The per-minute usage ledger: how many messages a dispatcher reserved
    in each minute. The sum over the last 60 rows is its hourly spend."""

    dispatcher = models.ForeignKey(Dispatcher, on_delete=models.CASCADE, related_name="usage")
    minute = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["dispatcher", "minute"], name="rate_usage_unique_minute"
            )
        ]

    def __str__(self) -> str:
        return f"{self.dispatcher}: {self.count} at {self.minute:%H:%M}"
