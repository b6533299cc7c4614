from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from urllib.parse import urlsplit

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from smtpservers.encryption import EncryptedTextField, reveal
from smtpservers.models import SmtpServer
from smtpservers.validators import validate_header_value, validate_helo_name

from . import providers
from .transports.backup import validate_backup_path

_DOMAIN = re.compile(
    r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$"
)
_SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_COMPUTER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_ACCOUNT_SID = re.compile(r"^AC[0-9a-f]{32}$")
_MESSAGING_SERVICE_SID = re.compile(r"^MG[0-9a-f]{32}$")
_AUTH_TOKEN = re.compile(r"^[0-9a-f]{32}$")
_SHORT_CODE = re.compile(r"^[0-9]{3,8}$")
# Twilio's alphanumeric sender ID: up to 11 letters, digits and spaces, at
# least one letter (all digits would read as a phone number).
_ALPHANUMERIC_SENDER = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")


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


def validate_api_url(value: str) -> None:
    """An email service's API URL: https, since the API key travels with
    every request (plain http only to this computer, e.g. a local relay)."""
    validate_header_value(value)
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
    except ValueError:
        parts, host = None, ""
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise ValidationError(
            "Enter the API's full URL, e.g. https://api.eu.mailgun.net/v3.", code="invalid_url"
        )
    if parts.scheme == "http" and host not in ("localhost", "127.0.0.1", "::1"):
        raise ValidationError(
            "Use https: the API key is sent with every request (http only to localhost).",
            code="insecure_url",
        )
    if parts.username or parts.password:
        raise ValidationError(
            "Do not put credentials in the URL; use the API key field.", code="credentials"
        )


_SNS_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$")


def validate_sns_topic_arn(value: str) -> None:
    if not _SNS_TOPIC_ARN.match(value):
        raise ValidationError(
            "Enter the topic's ARN as Amazon SNS shows it: "
            "arn:aws:sns:<region>:<12-digit account>:<topic name>."
        )


def validate_account_sid(value: str) -> None:
    if not _ACCOUNT_SID.match(value):
        raise ValidationError(
            "A Twilio account SID is AC followed by 32 hexadecimal characters "
            "(Twilio Console, Account Info).",
            code="invalid_account_sid",
        )


def validate_messaging_service_sid(value: str) -> None:
    if not _MESSAGING_SERVICE_SID.match(value):
        raise ValidationError(
            "A messaging service SID is MG followed by 32 hexadecimal characters "
            "(Twilio Console, Messaging, Services).",
            code="invalid_messaging_service_sid",
        )


def validate_auth_token(value: str) -> None:
    if not _AUTH_TOKEN.match(value):
        raise ValidationError(
            "A Twilio auth token is 32 hexadecimal characters (Twilio Console, Account Info).",
            code="invalid_auth_token",
        )


def validate_sms_sender(value: str) -> None:
    """A Twilio phone number in E.164 (+14155550100), a short code, or an
    alphanumeric sender ID: what Twilio's From accepts."""
    if value.startswith("+"):
        try:
            number = phonenumbers.parse(value, None)
        except phonenumbers.NumberParseException:
            number = None
        if (
            number is None
            or not phonenumbers.is_possible_number(number)
            or value != (phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
        ):
            raise ValidationError(
                "Write the from number in E.164 form: + country code and number, no spaces "
                "(e.g. +14155550100).",
                code="invalid_from_number",
            )
    elif not (_SHORT_CODE.match(value) or _ALPHANUMERIC_SENDER.match(value)):
        raise ValidationError(
            "Enter a Twilio phone number in E.164 form (+14155550100), a short code "
            "(digits only) or an alphanumeric sender ID (up to 11 letters, digits and spaces).",
            code="invalid_from_number",
        )


def validate_domain(value: str) -> None:
    if not _DOMAIN.match(value.lower()):
        raise ValidationError(
            "Enter a domain name, such as example.com (no @, no spaces, no trailing dot).",
            code="invalid_domain",
        )


def validate_selector(value: str) -> None:
    if not _SELECTOR.match(value):
        raise ValidationError(
            "A DKIM selector has only lower-case letters, digits and hyphens.",
            code="invalid_selector",
        )


class Dispatcher(models.Model):
    class Type(models.TextChoices):
        EMAIL = "EMAIL", "EMAIL"
        SMS = "SMS", "SMS"

    class DeliveryMode(models.TextChoices):
        SMTP = "smtp", "SMTP relay"
        DIRECT = "direct", "Direct delivery (to each recipient's mail server)"
        API = "api", "Email service API (SendGrid, Mailgun, Amazon SES, ...)"
        PICKUP = "pickup", "Local outbox (save as .eml files)"

    class Pacing(models.TextChoices):
        SPREAD = "spread", "Spread over the hour"
        FAST = "fast", "As fast as allowed"
        BLOCKS = "blocks", "Blocks with pauses"

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
    pacing = models.CharField(
        max_length=10,
        choices=Pacing.choices,
        default=Pacing.SPREAD,
        help_text="Spread over the hour: in any stretch of minutes at most that stretch's "
        "share of the hourly limit (600 per hour: 10 a minute, 50 in 5 minutes). "
        "As fast as allowed: the whole hourly limit at once, then wait. "
        "Blocks with pauses: N messages, then a pause of M minutes, within the hourly limit.",
    )
    block_size = models.PositiveIntegerField(
        "messages per block",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Blocks with pauses: how many messages make a block.",
    )
    block_pause_minutes = models.PositiveIntegerField(
        "pause between blocks (minutes)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(24 * 60)],
        help_text="Blocks with pauses: how long to wait after a block before the next one.",
    )
    messages_per_day = models.PositiveIntegerField(
        "messages dispatched per day",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Optional: at most this many in any 24 hours, whatever the hourly limit "
        "allows (a provider's daily quota).",
    )
    warmup_started_on = models.DateField(
        "warm-up started on",
        null=True,
        blank=True,
        help_text="Optional warm-up of a new sending IP address or domain: the first day of "
        "its schedule. Leave empty for no warm-up.",
    )
    warmup_first_day = models.PositiveIntegerField(
        "warm-up: messages on the first day",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
    )
    warmup_growth = models.DecimalField(
        "warm-up: daily growth factor",
        max_digits=4,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("1.01")), MaxValueValidator(Decimal("10"))],
        help_text="Each day's cap is the previous day's times this (e.g. 1.5).",
    )
    connections = models.PositiveSmallIntegerField(
        "parallel connections",
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(50)],
        help_text="How many SMTP sessions one batch sends over at once, each reused.",
    )
    retry_failed_after_sending = models.BooleanField(
        "set erroneous entries back to unsent after sending",
        default=False,
        help_text="When a campaign has sent everything, its failed recipients are tried "
        "once more before it completes (suppressed and unsubscribed ones stay skipped).",
    )
    # Batches in a row that could not reach or log in to the server; at
    # HERALD_DISPATCHER_MAX_FAILURES the dispatcher pauses itself.
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    last_error = models.CharField(max_length=500, blank=True, editable=False)
    # A pool member that failed is out of rotation until then (back-off),
    # instead of pausing: it rejoins by itself once it sends again.
    retry_after = models.DateTimeField(null=True, blank=True, editable=False)
    delivery_mode = models.CharField(
        max_length=10,
        choices=DeliveryMode.choices,
        default=DeliveryMode.SMTP,
        help_text="Direct delivery needs a static IP address whose PTR (reverse DNS) record "
        "matches the HELO/EHLO name; without one most receivers reject or junk the mail.",
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
    helo_name = models.CharField(
        "HELO/EHLO name",
        max_length=253,
        blank=True,
        validators=[validate_helo_name],
        help_text="Direct delivery: the host name Herald announces to receiving servers, "
        "e.g. mail.example.com. It must match the PTR record of this computer's static IP.",
    )
    esp_provider = models.CharField(
        "email service provider", max_length=20, blank=True, choices=providers.CHOICES
    )
    esp_api_key = EncryptedTextField(
        "API key",
        blank=True,
        default="",
        help_text="Stored encrypted and never shown; leave blank to keep the stored key. "
        "Amazon SES: access key ID:secret access key. Mailjet: API key:secret key.",
    )
    esp_api_url = models.CharField(
        "endpoint URL",
        max_length=500,
        blank=True,
        validators=[validate_api_url],
        help_text="Blank: the provider's usual API. For Mailgun EU "
        "https://api.eu.mailgun.net/v3, SparkPost EU https://api.eu.sparkpost.com/api/v1/, "
        "Amazon SES the regional endpoint, Postal your server (required).",
    )
    esp_webhook_key = EncryptedTextField(
        "webhook signing key",
        blank=True,
        default="",
        help_text="What the provider signs its event webhooks with (see the tracking webhook "
        "below for where to find it). Stored encrypted and never shown; leave blank to keep "
        "the stored key.",
    )
    esp_sns_topic_arn = models.CharField(
        "SNS topic ARN",
        max_length=256,
        blank=True,
        validators=[validate_sns_topic_arn],
        help_text="Amazon SES: the SNS topic your configuration set publishes events to, "
        "e.g. arn:aws:sns:eu-west-1:123456789012:herald-events. Notifications from any "
        "other topic are refused.",
    )
    backup_directory = models.CharField(
        "file backup folder",
        max_length=500,
        blank=True,
        validators=[validate_backup_path],
        help_text="A copy of each sent message is saved here as an .eml file, whatever the "
        "delivery mode. Placeholders: {campaign} (the campaign number), {subject}, "
        "{recipient}, {date} (YYYY-MM-DD), e.g. /srv/herald/backup/{date}/{campaign}. "
        "Blank: no backup.",
    )
    from_email = models.EmailField("e-mail address", blank=True, validators=[validate_header_value])
    from_name = models.CharField(
        "sender name", max_length=200, blank=True, validators=[validate_header_value]
    )
    reply_to = models.EmailField(blank=True, validators=[validate_header_value])
    request_read_receipts = models.BooleanField(
        default=False,
        help_text="Ask mail clients for a read receipt (Disposition-Notification-To), sent "
        "to the sender address.",
    )
    task_message_limit = models.PositiveIntegerField(
        "limit per sending task",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Optional: each campaign sent through this dispatcher stops after this "
        "many messages and says so; raise the limit and resume it to send the rest.",
    )
    check_suppressions = models.BooleanField(
        "check recipients against the suppression lists before sending",
        default=True,
        help_text="Suppressed addresses are always left out when a campaign's recipients "
        "are listed; this checks again just before each message leaves.",
    )
    # SMS through Twilio's Messages API.
    twilio_account_sid = models.CharField(
        "account SID", max_length=34, blank=True, validators=[validate_account_sid]
    )
    twilio_auth_token = EncryptedTextField(
        "auth token",
        null=True,
        blank=True,
        help_text="Stored encrypted and never shown. Leave blank to keep the stored token.",
    )
    sms_from_number = models.CharField(
        "from number",
        max_length=16,
        blank=True,
        validators=[validate_sms_sender],
        help_text="A Twilio phone number in E.164 form (+14155550100), a short code or an "
        "alphanumeric sender ID. Or leave blank and give a messaging service SID.",
    )
    twilio_messaging_service_sid = models.CharField(
        "messaging service SID",
        max_length=34,
        blank=True,
        validators=[validate_messaging_service_sid],
        help_text="Twilio picks the sender from the service's pool; used when no from number "
        "is given.",
    )
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
        if settings.HERALD_REQUIRE_VERIFIED_DOMAINS and self.type == self.Type.EMAIL:
            return self.sender_domain_problem
        return ""

    @property
    def from_domain(self) -> str:
        return self.from_email.rpartition("@")[2].lower()

    @property
    def sender_domain(self) -> SenderDomain | None:
        """The (unarchived) sender domain of the From address, if Herald has it."""
        return SenderDomain.objects.filter(domain=self.from_domain, archived=False).first()

    @property
    def sender_domain_problem(self) -> str:
        """Why mail from this dispatcher is not authenticated ("" if it is)."""
        domain = self.sender_domain
        if domain is None:
            return f"“{self.from_domain}” is not a sender domain in Herald"
        if not domain.is_verified:
            return f"Sender domain “{domain.domain}” is not verified ({domain.problem})"
        return ""

    def warmup_cap(self, day: date) -> int | None:
        """The warm-up's cap on messages in the 24 hours up to ``day``, or
        None once there is no warm-up (or it has not started)."""
        if not (self.warmup_started_on and self.warmup_first_day and self.warmup_growth):
            return None
        days = (day - self.warmup_started_on).days
        if days < 0:
            return 0  # scheduled to start later: nothing before it
        cap = self.warmup_first_day * float(self.warmup_growth) ** days
        return int(min(cap, 2**31))

    def clean(self) -> None:
        if self.pacing == self.Pacing.BLOCKS:
            missing = {
                name: "Blocks with pauses need this."
                for name in ("block_size", "block_pause_minutes")
                if not getattr(self, name)
            }
            if missing:
                raise ValidationError(missing)
        if self.warmup_started_on and not (self.warmup_first_day and self.warmup_growth):
            raise ValidationError(
                {
                    name: "A warm-up needs its first day's messages and its growth factor."
                    for name in ("warmup_first_day", "warmup_growth")
                    if not getattr(self, name)
                }
            )
        if self.type == self.Type.EMAIL:
            if not self.from_email:
                raise ValidationError({"from_email": "An EMAIL dispatcher needs a sender address."})
            if self.delivery_mode == self.DeliveryMode.SMTP and not self.smtp_server_id:
                raise ValidationError({"smtp_server": "Choose the SMTP server to relay through."})
            if self.delivery_mode == self.DeliveryMode.PICKUP and not self.pickup_directory:
                raise ValidationError(
                    {"pickup_directory": "Give the folder to write .eml files to."}
                )
            if self.delivery_mode == self.DeliveryMode.DIRECT:
                self._clean_direct()
            if self.delivery_mode == self.DeliveryMode.API:
                self._clean_api()
        elif self.type == self.Type.SMS:
            self._clean_sms()

    def _clean_sms(self) -> None:
        errors = {}
        if not self.twilio_account_sid:
            errors["twilio_account_sid"] = "An SMS dispatcher needs the Twilio account SID."
        if not self.twilio_auth_token:
            errors["twilio_auth_token"] = "An SMS dispatcher needs the Twilio auth token."
        if not (self.sms_from_number or self.twilio_messaging_service_sid):
            errors["sms_from_number"] = (
                "Give a from number or a messaging service SID: Twilio needs one of them "
                "to know who sends."
            )
        if errors:
            raise ValidationError(errors)

    def _clean_direct(self) -> None:
        name = self.helo_name
        if not name or name.startswith("[") or "." not in name:
            raise ValidationError(
                {
                    "helo_name": "Direct delivery announces this computer's full host name "
                    "(e.g. mail.example.com), the name its IP address's PTR record gives."
                }
            )

    def _clean_api(self) -> None:
        provider = providers.PROVIDERS.get(self.esp_provider)
        if provider is None:
            raise ValidationError({"esp_provider": "Choose the email service to send through."})
        key = reveal(self.esp_api_key)
        if not key:
            raise ValidationError({"esp_api_key": f"Enter the {provider.label} API key."})
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in key):
            raise ValidationError(
                {"esp_api_key": "An API key has no spaces, line breaks or control characters."}
            )
        if provider.key_pair:
            first, _, second = key.partition(":")
            if not first or not second:
                raise ValidationError(
                    {
                        "esp_api_key": f"{provider.label} needs two values: enter them as "
                        f"{provider.key_pair}."
                    }
                )
        if provider.url_required and not self.esp_api_url:
            raise ValidationError(
                {"esp_api_url": f"{provider.label} needs the URL of its API. {provider.url_hint}"}
            )
        problem = providers.webhook_key_problem(self.esp_provider, reveal(self.esp_webhook_key))
        if problem:
            raise ValidationError({"esp_webhook_key": problem})


class DispatcherPool(models.Model):
    """Several dispatchers of one type that a campaign sends through
    together: each member spends its own limits, in order of priority (by
    weight among equals), and a member that fails is taken out of rotation
    while the others go on."""

    name = models.CharField("pool name", max_length=100, unique=True)
    type = models.CharField(
        "dispatcher type", max_length=5, choices=Dispatcher.Type.choices, default="EMAIL"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "dispatcher pool"

    def __str__(self) -> str:
        return self.name


class PoolMember(models.Model):
    pool = models.ForeignKey(DispatcherPool, on_delete=models.CASCADE, related_name="members")
    dispatcher = models.ForeignKey(
        Dispatcher, on_delete=models.CASCADE, related_name="pool_memberships"
    )
    priority = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1)],
        help_text="1 is spent first; members of equal priority share the work.",
    )
    weight = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Among members of equal priority, each takes work in proportion to its "
        "weight (3 takes three times as much as 1), each within its own limits.",
    )
    last_failover_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_failover_reason = models.CharField(max_length=500, blank=True, editable=False)

    class Meta:
        ordering = ["priority", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["pool", "dispatcher"], name="pool_member_once")
        ]

    def __str__(self) -> str:
        return f"{self.dispatcher} in {self.pool}"

    def clean(self) -> None:
        # The pool may be unsaved yet (added with its members in one form).
        pool = self._state.fields_cache.get("pool")
        if pool is None and self.pool_id:
            pool = self.pool
        if self.dispatcher_id and pool is not None and self.dispatcher.type != pool.type:
            raise ValidationError(
                {
                    "dispatcher": f"A {pool.type} pool takes {pool.type} dispatchers; "
                    f"“{self.dispatcher}” is {self.dispatcher.type}."
                }
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


class SenderDomain(models.Model):
    """A domain Herald sends from: its DKIM key, the records to publish, and
    what the last look-up found. Never deleted, only archived, so the
    history of who sent from where stays readable."""

    class Status(models.TextChoices):
        UNKNOWN = "unknown", "Not checked yet"
        OK = "ok", "Verified"
        FAILED = "failed", "Failed"

    domain = models.CharField(
        max_length=253,
        unique=True,
        validators=[validate_domain],
        help_text="The domain of the sender addresses, e.g. example.com.",
    )
    dmarc_report_email = models.EmailField(
        "DMARC report address",
        blank=True,
        validators=[validate_header_value],
        help_text="Where receivers send DMARC aggregate reports (rua). "
        "Blank: postmaster@ the domain.",
    )
    return_path_domain = models.CharField(
        "return-path (bounce) domain",
        max_length=253,
        blank=True,
        validators=[validate_domain],
        help_text="The domain of the envelope sender, where bounces come back. "
        "Blank: the domain itself.",
    )
    return_path_host = models.CharField(
        "bounce mail host",
        max_length=253,
        blank=True,
        validators=[validate_domain],
        help_text="The mail server that receives the bounce mailbox's mail "
        "(the MX to publish for the return-path domain).",
    )
    dkim_selector = models.CharField(max_length=63, validators=[validate_selector], editable=False)
    dkim_private_key = EncryptedTextField(editable=False)
    dkim_public_key = models.TextField(editable=False)
    # The first key signs once DKIM has verified; a key made by rotation
    # waits in the pending fields until its own record verifies.
    key_active = models.BooleanField(default=False, editable=False)
    pending_selector = models.CharField(
        max_length=63, blank=True, validators=[validate_selector], editable=False
    )
    pending_private_key = EncryptedTextField(null=True, blank=True, editable=False)
    pending_public_key = models.TextField(blank=True, editable=False)
    pending_reason = models.TextField(blank=True, editable=False)
    spf_status = models.CharField(
        "SPF", max_length=10, choices=Status.choices, default=Status.UNKNOWN, editable=False
    )
    spf_reason = models.TextField(blank=True, editable=False)
    dkim_status = models.CharField(
        "DKIM", max_length=10, choices=Status.choices, default=Status.UNKNOWN, editable=False
    )
    dkim_reason = models.TextField(blank=True, editable=False)
    dmarc_status = models.CharField(
        "DMARC", max_length=10, choices=Status.choices, default=Status.UNKNOWN, editable=False
    )
    dmarc_reason = models.TextField(blank=True, editable=False)
    checked_at = models.DateTimeField("last checked", null=True, blank=True, editable=False)
    verified_at = models.DateTimeField("last verified", null=True, blank=True, editable=False)
    archived = models.BooleanField(default=False, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["archived", "domain"]

    def __str__(self) -> str:
        return self.domain

    def clean(self) -> None:
        # Normalise before the validators run, so Example.COM is example.com.
        self.domain = (self.domain or "").strip().lower()
        self.return_path_domain = (self.return_path_domain or "").strip().lower()
        self.return_path_host = (self.return_path_host or "").strip().lower()

    @property
    def is_verified(self) -> bool:
        return all(
            status == self.Status.OK
            for status in (self.spf_status, self.dkim_status, self.dmarc_status)
        )

    @property
    def problem(self) -> str:
        """What is wrong, one check after the other ("" when verified)."""
        found = []
        for label, status, reason in (
            ("SPF", self.spf_status, self.spf_reason),
            ("DKIM", self.dkim_status, self.dkim_reason),
            ("DMARC", self.dmarc_status, self.dmarc_reason),
        ):
            if status == self.Status.UNKNOWN:
                found.append(f"{label}: not checked yet")
            elif status == self.Status.FAILED:
                found.append(f"{label}: {reason}")
        return "; ".join(found)


# --- per-provider throttling --------------------------------------------------


class MailboxProvider(models.TextChoices):
    """Who hosts a recipient's mailbox, as far as throttling goes."""

    GOOGLE = "google", "Google (Gmail, Workspace)"
    MICROSOFT = "microsoft", "Microsoft (Outlook.com, Microsoft 365)"
    YAHOO = "yahoo", "Yahoo (and AOL)"
    APPLE = "apple", "Apple (iCloud)"
    OTHER = "other", "Any other domain (each on its own)"


# Starting points: no provider publishes a number, all ask for a steady,
# moderate rate that grows with reputation and slows down when they say
# so (Gmail 4.7.28, Outlook 4.7.500 "Server busy", Yahoo TSS04), which
# Herald does by itself. Messages per minute.
PROVIDER_RATE_DEFAULTS = {
    MailboxProvider.GOOGLE: 250,
    MailboxProvider.MICROSOFT: 150,
    MailboxProvider.YAHOO: 150,
    MailboxProvider.APPLE: 100,
    MailboxProvider.OTHER: 60,
}


class ProviderRate(models.Model):
    """How fast a dispatcher may send to one mailbox provider. The row for
    "any other domain" is each such domain's own rate; a provider without
    a row is not held back (beyond the dispatcher's own limits)."""

    dispatcher = models.ForeignKey(
        Dispatcher, on_delete=models.CASCADE, related_name="provider_rates"
    )
    provider = models.CharField(max_length=12, choices=MailboxProvider.choices)
    per_minute = models.PositiveIntegerField(
        "messages per minute",
        validators=[MinValueValidator(1)],
        help_text="At most this many in any minute; halved for a while when the provider "
        "answers “rate limited, try again later”.",
    )

    class Meta:
        ordering = ["pk"]
        verbose_name = "per-provider rate"
        constraints = [
            models.UniqueConstraint(fields=["dispatcher", "provider"], name="provider_rate_once")
        ]

    def __str__(self) -> str:
        return f"{self.get_provider_display()}: {self.per_minute}/min"


class ProviderThrottle(models.Model):
    """A provider (or domain) that told a dispatcher to slow down: the rate
    it was cut to, when, and what the server said. The rate recovers by
    itself with every minute without a refusal."""

    dispatcher = models.ForeignKey(Dispatcher, on_delete=models.CASCADE, related_name="throttles")
    group = models.CharField(max_length=253)  # a MailboxProvider value or a domain
    slowed_to = models.PositiveIntegerField(null=True, blank=True)
    slowed_at = models.DateTimeField(null=True, blank=True)
    refused_at = models.DateTimeField(null=True, blank=True)
    reply = models.CharField(max_length=500, blank=True)
    refusals = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["dispatcher", "group"], name="provider_throttle_once")
        ]

    def __str__(self) -> str:
        return f"{self.dispatcher}: {self.group} slowed to {self.slowed_to}/min"


class ProviderUsage(models.Model):
    """The per-provider ledger: messages a dispatcher claimed for one group
    in one minute, summed over every worker (claims hold the dispatcher's
    row lock)."""

    dispatcher = models.ForeignKey(
        Dispatcher, on_delete=models.CASCADE, related_name="provider_usage"
    )
    group = models.CharField(max_length=253)
    minute = models.DateTimeField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["dispatcher", "minute", "group"], name="provider_usage_once"
            )
        ]
        indexes = [models.Index(fields=["minute"], name="provider_usage_minute_idx")]

    def __str__(self) -> str:
        return f"{self.dispatcher}: {self.count} to {self.group} at {self.minute:%H:%M}"


class MailDomain(models.Model):
    """What a recipient domain's MX look-up found: its provider ("" when
    none known: the domain is its own group). Looked up again once old."""

    domain = models.CharField(max_length=253, unique=True)
    provider = models.CharField(max_length=12, blank=True, choices=MailboxProvider.choices)
    mx_host = models.CharField("MX host", max_length=253, blank=True)
    error = models.CharField(max_length=200, blank=True)
    resolved_at = models.DateTimeField()

    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return f"{self.domain} → {self.provider or 'its own group'}"
