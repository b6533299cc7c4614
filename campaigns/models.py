from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from dispatchers.models import Dispatcher, DispatcherPool
from smtpservers.validators import validate_header_value

from .sandbox import template_error

# The names the CSV import gives custom attributes (imports.attribute_name_guess).
validate_attribute_name = RegexValidator(
    r"^[a-z_][a-z0-9_]{0,63}$",
    "An attribute name has lowercase letters, digits and underscores, as the import makes them.",
)


class Contact(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
        BOUNCED = "bounced", "Bounced"
        COMPLAINED = "complained", "Complained"

    email = models.EmailField(unique=True, validators=[validate_header_value])
    phone = models.CharField(max_length=32, blank=True)
    first_name = models.CharField(max_length=100, blank=True, validators=[validate_header_value])
    last_name = models.CharField(max_length=100, blank=True, validators=[validate_header_value])
    language = models.CharField(max_length=16, blank=True)
    time_zone = models.CharField(max_length=64, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    source = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["email"]

    def __str__(self) -> str:
        return self.email

    def save(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        # One address, one contact, whatever case it was typed in.
        self.email = self.email.strip().lower()
        super().save(*args, **kwargs)

    @property
    def full_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


class ContactList(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    contacts = models.ManyToManyField(Contact, through="Subscription", related_name="lists")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "list"

    def __str__(self) -> str:
        return self.name


class Subscription(models.Model):
    """A contact on a list, and the record of their consent. Leaving the
    list keeps the row, marked with when and how they left: an import or
    an API call that names them again must not put them back on it
    silently. Only a row with no ``unsubscribed_at`` is a subscription."""

    class Via(models.TextChoices):
        PREFERENCES = "preferences", "Manage subscriptions page"
        API = "api", "API"
        ADMIN = "admin", "Admin"

    contact = models.ForeignKey(Contact, on_delete=models.CASCADE)
    contact_list = models.ForeignKey(ContactList, on_delete=models.CASCADE, verbose_name="list")
    created_at = models.DateTimeField("subscribed at", auto_now_add=True)
    source = models.CharField(max_length=100, blank=True, help_text="How and where consent came.")
    unsubscribed_at = models.DateTimeField(null=True, blank=True)
    # Database defaults too: the import and item generation write in SQL.
    unsubscribed_via = models.CharField(
        "unsubscribed through",
        max_length=16,
        choices=Via.choices,
        blank=True,
        default="",
        db_default="",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["contact_list", "contact"], name="subscription_unique")
        ]
        indexes = [
            # Autoresponders: who joined one of these lists since a time.
            models.Index(fields=["contact_list", "created_at"], name="subscription_joined_idx")
        ]

    def __str__(self) -> str:
        return f"{self.contact} on {self.contact_list}"

    @property
    def is_subscribed(self) -> bool:
        return self.unsubscribed_at is None


class Suppression(models.Model):
    class Source(models.TextChoices):
        MANUAL = "manual", "Manual"
        BOUNCE = "bounce", "Bounce"
        COMPLAINT = "complaint", "Complaint"
        UNSUBSCRIBE = "unsubscribe", "Unsubscribe"

    pattern = models.CharField(
        "address or domain",
        max_length=254,
        unique=True,
        help_text="An address (jane@example.org) or a whole domain (*@example.org).",
    )
    reason = models.CharField(max_length=255, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.MANUAL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pattern"]

    def __str__(self) -> str:
        return self.pattern

    def save(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.pattern = self.pattern.strip().lower()
        super().save(*args, **kwargs)


def validate_template_source(value: str) -> None:
    error = template_error(value)
    if error:
        raise ValidationError(f"Template error: {error}", code="template_syntax")


class Template(models.Model):
    name = models.CharField(max_length=200, unique=True)
    subject = models.CharField(
        max_length=255, validators=[validate_header_value, validate_template_source]
    )
    html_body = models.TextField("HTML body", blank=True, validators=[validate_template_source])
    text_body = models.TextField(
        "plain-text body",
        blank=True,
        validators=[validate_template_source],
        help_text="Leave blank to generate it from the HTML body.",
    )
    sms_body = models.TextField("SMS body", blank=True, validators=[validate_template_source])
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not (self.html_body.strip() or self.text_body.strip() or self.sms_body.strip()):
            raise ValidationError(
                "Write an HTML body, a plain-text body, or both (or an SMS body, for SMS "
                "campaigns)."
            )


DEFAULT_TEXT_FOOTER = """--
Unsubscribe: {{ unsubscribe_url }}
Manage subscriptions: {{ manage_subscriptions_url }}
"""

DEFAULT_HTML_FOOTER = """<p style="font-size:12px;color:#666">
<a href="{{ unsubscribe_url }}">Unsubscribe</a> |
<a href="{{ manage_subscriptions_url }}">Manage subscriptions</a>
</p>
"""


class MarketingConfiguration(models.Model):
    """The footers appended to every campaign and autoresponder message.
    One row, made on first use; the page edits it in place."""

    text_footer = models.TextField(
        "plain-text footer",
        blank=True,
        default=DEFAULT_TEXT_FOOTER,
        validators=[validate_template_source],
        help_text="Appended to the plain-text part. Placeholders: {{ unsubscribe_url }}, "
        "{{ manage_subscriptions_url }} and the contact's fields.",
    )
    html_footer = models.TextField(
        "rich-text footer",
        blank=True,
        default=DEFAULT_HTML_FOOTER,
        validators=[validate_template_source],
        help_text="Inserted before </body> of the HTML part (appended when there is none).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "marketing configuration"
        verbose_name_plural = "marketing configuration"

    def __str__(self) -> str:
        return "Marketing configuration"

    @classmethod
    def load(cls) -> MarketingConfiguration:
        configuration, _ = cls.objects.get_or_create(pk=1)
        return configuration


SEGMENT_OPERATORS = {
    "equals": "is",
    "not_equals": "is not",
    "contains": "contains (text)",
    "exists": "is set",
    "missing": "is not set",
}


# Engagement rules of a segment: what the contact did with the campaigns
# sent to them, read from their items (first human open and click, and
# when it was sent). Each rule may name one campaign and a window in days.
SEGMENT_ACTIVITIES = {
    "opened": "opened",
    "not_opened": "did not open",
    "clicked": "clicked",
    "not_clicked": "did not click",
    "sent": "was sent",
    "sent_not_opened": "was sent but did not open",
}


class Segment(models.Model):
    """A saved filter over contacts, evaluated when used (so its count and
    its members are always current). Every part given must hold."""

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    statuses = models.JSONField(
        default=list,
        blank=True,
        help_text='Contact statuses to keep, e.g. ["active"]. Empty: any status.',
    )
    lists = models.ManyToManyField(
        ContactList,
        blank=True,
        related_name="segments",
        verbose_name="on any of these lists",
        help_text="Empty: list membership does not matter.",
    )
    not_lists = models.ManyToManyField(
        ContactList, blank=True, related_name="+", verbose_name="on none of these lists"
    )
    conditions = models.JSONField(
        default=list,
        blank=True,
        help_text='Custom attribute conditions, e.g. [{"attribute": "plan", "op": "equals", '
        '"value": "gold"}]. Operators: ' + ", ".join(SEGMENT_OPERATORS) + ".",
    )
    engagement = models.JSONField(
        default=list,
        blank=True,
        help_text='Engagement rules, e.g. [{"activity": "opened", "days": 30}] (opened any '
        'campaign in the last 30 days), [{"activity": "clicked", "campaign": 12}] (clicked '
        'campaign 12), [{"activity": "not_opened"}] (never opened), [{"activity": '
        '"sent_not_opened", "days": 90}] (was sent at least one campaign in the last 90 days '
        "but opened none of them). Activities: "
        + ", ".join(f"{key} ({label})" for key, label in SEGMENT_ACTIVITIES.items())
        + '. "campaign" and "days" are optional: without them, any campaign, ever.',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from .audience import segment_rules_check

        segment_rules_check(
            statuses=self.statuses, conditions=self.conditions, engagement=self.engagement
        )


class Campaign(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SCHEDULED = "scheduled", "Scheduled"
        GENERATING = "generating", "Generating"
        SENDING = "sending", "Sending"
        COMPLETED = "completed", "Completed"
        PAUSED = "paused", "Paused"
        CANCELLED = "cancelled", "Cancelled"

    class Kind(models.TextChoices):
        REGULAR = "regular", "Regular campaign"
        AUTORESPONDER = "autoresponder", "Autoresponder"

    class Trigger(models.TextChoices):
        LIST_JOINED = "list_joined", "Joined a list"
        DATE_ATTRIBUTE = "date_attribute", "Date attribute"

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.REGULAR)
    autoresponder_delay = models.DurationField(
        null=True,
        blank=True,
        help_text="Autoresponders: how long after a contact subscribes to one of the lists "
        "the message goes out (e.g. 1 day).",
    )
    trigger = models.CharField(
        "autoresponder trigger",
        max_length=16,
        choices=Trigger.choices,
        default=Trigger.LIST_JOINED,
        help_text="Autoresponders: a subscription to one of the lists, or a date held in a "
        "contact attribute (a birthday, a renewal date).",
    )
    date_attribute = models.CharField(
        max_length=100,
        blank=True,
        validators=[validate_attribute_name],
        help_text="Date trigger: the contact attribute holding the date, as YYYY-MM-DD "
        "(e.g. renewal_date).",
    )
    date_offset_days = models.IntegerField(
        "days from the date",
        default=0,
        validators=[MinValueValidator(-3650), MaxValueValidator(3650)],
        help_text="Date trigger: send this many days after the date (negative: before it).",
    )
    template = models.ForeignKey(Template, on_delete=models.PROTECT)
    track_opens = models.BooleanField(
        default=False, help_text="Add an invisible image that tells when a message is opened."
    )
    track_clicks = models.BooleanField(
        default=False,
        help_text="Send the links of the HTML part through Herald to count clicks. Links "
        "with placeholders in them are left as they are.",
    )
    lists = models.ManyToManyField(ContactList, related_name="campaigns", blank=True)
    segments = models.ManyToManyField(
        Segment, related_name="campaigns", blank=True, help_text="Also send to these segments."
    )
    exclude_lists = models.ManyToManyField(
        ContactList, related_name="excluded_from", blank=True, verbose_name="except lists"
    )
    exclude_segments = models.ManyToManyField(
        Segment, related_name="excluded_from", blank=True, verbose_name="except segments"
    )
    only_segment = models.ForeignKey(
        Segment,
        verbose_name="only contacts in segment",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="limited_campaigns",
        help_text="Optional: of everyone above, only the contacts this segment holds when "
        "their item is made. An autoresponder that answers joining a list sends only to "
        "those who join and are in the segment.",
    )
    send_limit = models.PositiveIntegerField(
        "send limit",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Optional: send to at most this many recipients of the audience, in "
        "the order they joined Herald (suppressed ones do not count). Blank: everyone. "
        "Not for autoresponders.",
    )
    dispatcher = models.ForeignKey(Dispatcher, on_delete=models.PROTECT, related_name="campaigns")
    pool = models.ForeignKey(
        DispatcherPool,
        verbose_name="dispatcher pool",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="campaigns",
        help_text="Optional: send through every member of this pool, each within its own "
        "limits. The dispatcher above must be one of its members.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    paused_reason = models.CharField(max_length=255, blank=True)
    # Send errors in a row (failed or deferred); at
    # HERALD_CAMPAIGN_MAX_CONSECUTIVE_ERRORS the campaign pauses itself.
    consecutive_errors = models.PositiveIntegerField(default=0, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Keyset cursor of item generation: the last contact id paged in, so a
    # crashed generate job resumes where it stopped.
    generated_through = models.BigIntegerField(default=0)
    audience_complete = models.BooleanField(default=False, editable=False)
    # Counters frozen when the campaign completes (live ones are counted).
    total_count = models.PositiveIntegerField(default=0)
    sent_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    skipped_count = models.PositiveIntegerField(default=0)
    # Maintained as events arrive (recipients who opened / clicked at least
    # once, machines not counted), so the report never counts events.
    unique_opens = models.PositiveIntegerField(default=0, editable=False)
    unique_clicks = models.PositiveIntegerField(default=0, editable=False)
    # Recipients who unsubscribed through this campaign's link or header.
    unsubscribes = models.PositiveIntegerField(default=0, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("pause_campaign", "Can pause and resume campaigns")]
        indexes = [models.Index(fields=["status", "scheduled_at"])]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.pool_id and self.dispatcher_id:
            if not self.pool.members.filter(dispatcher_id=self.dispatcher_id).exists():
                raise ValidationError(
                    {"dispatcher": f"Choose one of the members of the pool “{self.pool}”."}
                )
        if self.dispatcher_id and self.template_id:
            self._clean_channel()
        if self.kind == self.Kind.AUTORESPONDER:
            self._clean_trigger()
            if self.send_limit is not None:
                raise ValidationError(
                    {
                        "send_limit": "An autoresponder answers everyone who qualifies: "
                        "leave it blank."
                    }
                )

    def _clean_trigger(self) -> None:
        if self.trigger == self.Trigger.DATE_ATTRIBUTE:
            if not self.date_attribute:
                raise ValidationError(
                    {"date_attribute": "A date trigger needs the attribute that holds the date."}
                )
        elif self.autoresponder_delay is None:
            raise ValidationError({"autoresponder_delay": "An autoresponder needs a delay."})

    def _clean_channel(self) -> None:
        """The template must have a body for what the dispatcher sends."""
        template = self.template
        if self.dispatcher.type == Dispatcher.Type.SMS and not template.sms_body.strip():
            raise ValidationError(
                {"template": "The dispatcher sends SMS: choose a template with an SMS body."}
            )
        if self.dispatcher.type == Dispatcher.Type.EMAIL and not (
            template.html_body.strip() or template.text_body.strip()
        ):
            raise ValidationError(
                {
                    "template": "The dispatcher sends email: choose a template with an HTML or "
                    "plain-text body."
                }
            )

    @property
    def is_live(self) -> bool:
        return self.status in (self.Status.SCHEDULED, self.Status.GENERATING, self.Status.SENDING)


class Batch(models.Model):
    """Items one process-messages run claimed for one dispatcher.

    The lease says how long the outbound task may hold them; a batch whose
    lease ran out (its worker died) is reclaimed by the next run."""

    dispatcher = models.ForeignKey(Dispatcher, on_delete=models.CASCADE, related_name="batches")
    # When the claim reserved its budget, on the claim's own clock: what is
    # given back goes to that minute of the rate ledger, the one it was spent in.
    created_at = models.DateTimeField(default=timezone.now)
    lease_expires_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    size = models.PositiveIntegerField(default=0)
    # Items are sent in id order: every claimed item of the batch up to this
    # id may be on the wire (one row written per chunk, not one per item).
    # A batch released with it set flags those items possibly duplicated.
    on_wire_through = models.BigIntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "batches"
        indexes = [
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(finished_at__isnull=True),
                name="batch_open_lease_idx",
            )
        ]

    def __str__(self) -> str:
        return f"Batch {self.pk} ({self.dispatcher})"


def new_token() -> str:
    return uuid.uuid4().hex


class CampaignItem(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        CLAIMED = "claimed", "Claimed"
        DEFERRED = "deferred", "Deferred"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"
        BOUNCED = "bounced", "Bounced"

    LIVE = (Status.PENDING, Status.CLAIMED, Status.DEFERRED)

    # Every claim and every result rewrites the item's row into each of the
    # table's indexes, so none is kept twice: the campaign's own lookups use
    # item_unique_recipient (campaign first), and the token's uniqueness is
    # a constraint (unique=True would add a LIKE index no query uses).
    campaign = models.ForeignKey(
        Campaign, on_delete=models.CASCADE, related_name="items", db_index=False
    )
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="items")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    token = models.CharField(max_length=32, default=new_token, editable=False)
    # No constraint in the database: a claim sets the batch of 500 items it
    # has just created, and PostgreSQL's deferred check of each at commit
    # cost 9 ms a claim, two thirds of the claim's own UPDATE. No index of
    # every item either: the batch's items are only looked up while claimed
    # (item_claimed_batch_idx), and an index of all of them took a new
    # entry at each of an item's three writes (generated, claimed, sent).
    # So a pruned batch (history_prune) leaves its id on the items it sent,
    # as history; clearing it would walk the whole table.
    batch = models.ForeignKey(
        Batch,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Set just before the message goes on the wire: a worker that dies
    # between this and the result leaves the item possibly sent.
    sending_started_at = models.DateTimeField(null=True, blank=True)
    possibly_duplicated = models.BooleanField(default=False)
    first_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    smtp_response = models.CharField(max_length=500, blank=True)
    queue_id = models.CharField(max_length=100, blank=True)
    # SMS: the last status Twilio reported for the message (queued, sent,
    # delivered, undelivered, failed); only ever moves forward. A database
    # default too, as item generation inserts rows in SQL.
    provider_status = models.CharField(max_length=12, blank=True, default="", db_default="")
    skip_reason = models.CharField(max_length=32, blank=True)
    # The recipient's mailbox provider (google, microsoft, yahoo, apple) or,
    # for any other, its domain: what per-provider rates are counted by.
    # Set when items are generated; "" for items made otherwise (not
    # throttled per provider).
    provider_group = models.CharField(max_length=253, blank=True, default="", db_default="")
    # First human open and click (tracking); machine fetches do not set them.
    opened_at = models.DateTimeField(null=True, blank=True)
    clicked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "contact"], name="item_unique_recipient"),
            # Bounces, tracking and unsubscribes find their item by token.
            models.UniqueConstraint(fields=["token"], name="item_token_unique"),
        ]
        indexes = [
            models.Index(
                fields=["campaign", "id"],
                condition=Q(status__in=["pending", "deferred"]),
                name="item_due_idx",
            ),
            models.Index(
                fields=["batch"], condition=Q(status="claimed"), name="item_claimed_batch_idx"
            ),
            # Twilio's status callbacks find their item by message SID.
            models.Index(fields=["queue_id"], condition=~Q(queue_id=""), name="item_queue_id_idx"),
            # The report's sends-per-minute chart: a range scan over a window.
            models.Index(
                fields=["campaign", "sent_at"],
                condition=Q(sent_at__isnull=False),
                name="item_sent_at_idx",
            ),
            # The report's table filtered on a rare status pages this index
            # by contact instead of walking past the sent majority.
            models.Index(
                fields=["campaign", "contact"],
                condition=Q(status__in=["failed", "bounced", "deferred", "skipped"]),
                name="item_problem_idx",
            ),
            # Segments' engagement rules ("opened in the last 30 days"): a
            # probe per contact, over the few items that were ever opened or
            # clicked; "was sent" rules use the contact's own index.
            models.Index(
                fields=["contact", "opened_at"],
                condition=Q(opened_at__isnull=False),
                name="item_contact_opened_idx",
            ),
            models.Index(
                fields=["contact", "clicked_at"],
                condition=Q(clicked_at__isnull=False),
                name="item_contact_clicked_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign} → {self.contact}"


class CampaignStatusCount(models.Model):
    """How many of a campaign's items are in each status, kept by database
    triggers on the items table (migrations 0011 and 0021), one aggregate
    per statement: pages and jobs read a handful of rows instead of counting
    a million items. No foreign key: a deleted campaign's rows go with it by
    trigger too.

    Each (campaign, status) is split over SLOTS rows, a database session
    writing the slot of its backend's number: one row per status would be
    locked by every claim and every result write of the campaign until
    their commit, so all workers would take turns. A slot alone may be
    negative (items claimed in one session, sent in another); read the sum,
    with ``campaigns.selectors.status_counts``."""

    SLOTS = 8

    campaign_id = models.BigIntegerField()
    status = models.CharField(max_length=10)
    slot = models.SmallIntegerField(default=0)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["campaign_id", "status", "slot"], name="status_count_slot_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id} {self.status}: {self.count}"


class TrackedLink(models.Model):
    """A link of a campaign's HTML, behind a number: a click URL carries the
    number and the destination is looked up here, so nobody can make
    Herald redirect to an address of their choosing."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="links")
    url = models.URLField(max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "url"], name="link_unique_per_campaign")
        ]

    def __str__(self) -> str:
        return self.url


class TrackingEvent(models.Model):
    class Kind(models.TextChoices):
        OPEN = "open", "Open"
        CLICK = "click", "Click"

    item = models.ForeignKey(CampaignItem, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    link = models.ForeignKey(TrackedLink, null=True, blank=True, on_delete=models.CASCADE)
    # Link scanners and privacy proxies (Apple Mail) fetch what no person saw.
    machine = models.BooleanField(default=False)
    user_agent = models.CharField(max_length=255, blank=True)
    # Set for what an email service reported (its webhook's event id), so a
    # retried or replayed webhook records nothing twice.
    provider_event_id = models.CharField(max_length=200, blank=True, default="")
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["item", "kind"])]
        constraints = [
            models.UniqueConstraint(
                fields=["provider_event_id"],
                condition=~Q(provider_event_id=""),
                name="tracking_provider_event_once",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} of {self.item_id}"


class ImportJob(models.Model):
    """One CSV upload and its import: the mapping chosen in the browser, the
    progress the page polls, and where the report of rejected rows is."""

    class Kind(models.TextChoices):
        CONTACTS = "contacts", "Contacts"
        SUPPRESSIONS = "suppressions", "Suppressions"

    class Status(models.TextChoices):
        UPLOADED = "uploaded", "Waiting for column mapping"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Importing"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UPLOADED)
    original_name = models.CharField(max_length=255)
    # Relative to settings.VAR_DIR / "imports".
    file_name = models.CharField(max_length=100)
    size_bytes = models.BigIntegerField(default=0)
    delimiter = models.CharField(max_length=1, default=",")
    headers = models.JSONField(default=list)
    # One entry per column: {"field": "email" | ... | "attribute" | "ignore", "name": "..."}
    mapping = models.JSONField(default=list, blank=True)
    contact_list = models.ForeignKey(
        ContactList, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    source = models.CharField(max_length=100, blank=True)
    bytes_read = models.BigIntegerField(default=0)
    rows_read = models.PositiveIntegerField(default=0)
    imported = models.PositiveIntegerField(default=0)
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    # Contacts of the file who had unsubscribed from the list: imported,
    # but not put back on it.
    kept_unsubscribed = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Bumped with every chunk: a running import whose heartbeat stopped
    # belongs to a dead worker and may be taken over.
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} import {self.pk} ({self.original_name})"

    @property
    def percent(self) -> int:
        if self.status == self.Status.DONE:
            return 100
        if not self.size_bytes:
            return 0
        return min(99, self.bytes_read * 100 // self.size_bytes)
