"""Serializers: ModelSerializer runs the model fields' validators (header
injection, template syntax); contacts and suppressions add the rules of
the CSV import, so every way in accepts the same data."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from campaigns.audience import segment_rules_check
from campaigns.imports import RowRejected, contact_row_clean, suppression_row_clean
from campaigns.models import (
    Campaign,
    CampaignItem,
    Contact,
    ContactList,
    Segment,
    Subscription,
    Suppression,
    Template,
)
from dispatchers.models import Dispatcher
from jobs.models import JobRun

from .services import BULK_MAX_ROWS


class LowercaseEmailField(serializers.EmailField):
    # Lowercased before the uniqueness check, as Contact.save() stores it.
    def to_internal_value(self, data: Any) -> str:
        return super().to_internal_value(data).strip().lower()


def _import_rule(field: str, value: str) -> dict[str, Any]:
    # The CSV import's checks, one field at a time (a known-good address
    # stands in for the email, which its own field checks).
    try:
        return contact_row_clean({"email": "check@example.org", field: value}, {})
    except RowRejected as exc:
        raise serializers.ValidationError(str(exc)) from None


class SubscriptionSerializer(serializers.ModelSerializer):
    subscribed_at = serializers.DateTimeField(source="created_at", read_only=True)
    unsubscribed_via = serializers.CharField(
        read_only=True,
        help_text="How they left: " + ", ".join(Subscription.Via.values) + "; empty while "
        "subscribed.",
    )

    class Meta:
        model = Subscription
        fields = ["list", "subscribed_at", "source", "unsubscribed_at", "unsubscribed_via"]
        extra_kwargs = {"list": {"source": "contact_list_id"}}
        read_only_fields = fields


class ContactSerializer(serializers.ModelSerializer):
    email = LowercaseEmailField(max_length=254)
    # The lists the contact is subscribed to now; "subscriptions" has every
    # list they joined, with when and how, and when and how they left.
    lists = serializers.SerializerMethodField()
    subscriptions = SubscriptionSerializer(source="subscription_set", many=True, read_only=True)

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField()))
    def get_lists(self, contact: Contact) -> list[int]:
        return [s.contact_list_id for s in contact.subscription_set.all() if s.is_subscribed]

    class Meta:
        model = Contact
        fields = [
            "id",
            "email",
            "phone",
            "first_name",
            "last_name",
            "language",
            "time_zone",
            "attributes",
            "status",
            "source",
            "lists",
            "subscriptions",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def validate_email(self, value: str) -> str:
        if Contact.objects.filter(email=value).exclude(pk=getattr(self.instance, "pk", None)):
            raise serializers.ValidationError("A contact with this email already exists.")
        try:
            contact_row_clean({"email": value}, {})
        except RowRejected as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value

    def validate_phone(self, value: str) -> str:
        return _import_rule("phone", value)["phone"] if value else value

    def validate_language(self, value: str) -> str:
        return _import_rule("language", value)["language"] if value else value

    def validate_time_zone(self, value: str) -> str:
        return _import_rule("time_zone", value)["time_zone"] if value else value

    def validate_attributes(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("Attributes are a JSON object.")
        if "\\u0000" in json.dumps(value):
            raise serializers.ValidationError("NUL characters are not allowed.")
        return value


class BulkContactSerializer(serializers.Serializer):
    """Documents one row; rows are checked one by one by the upsert, so a
    bad row is reported, not fatal."""

    email = serializers.CharField()
    phone = serializers.CharField(required=False, allow_blank=True)
    first_name = serializers.CharField(required=False, allow_blank=True)
    last_name = serializers.CharField(required=False, allow_blank=True)
    language = serializers.CharField(required=False, allow_blank=True)
    time_zone = serializers.CharField(required=False, allow_blank=True)
    attributes = serializers.DictField(required=False)


class BulkUpsertSerializer(serializers.Serializer):
    contacts = serializers.ListField(
        child=serializers.JSONField(), max_length=BULK_MAX_ROWS, allow_empty=False
    )
    list = serializers.PrimaryKeyRelatedField(
        queryset=ContactList.objects.all(), required=False, allow_null=True
    )
    source = serializers.CharField(max_length=100, required=False, default="api")


class BulkUpsertDocSerializer(serializers.Serializer):
    contacts = BulkContactSerializer(many=True)
    list = serializers.IntegerField(required=False, allow_null=True)
    source = serializers.CharField(required=False)


class RowResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["created", "updated", "rejected"])
    errors = serializers.ListField(child=serializers.CharField())


class BulkResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    rejected = serializers.IntegerField()
    kept_unsubscribed = serializers.IntegerField(
        help_text="Contacts who had unsubscribed from the list: updated, not re-added to it."
    )
    results = RowResultSerializer(many=True)


class ListsSerializer(serializers.Serializer):
    lists = serializers.PrimaryKeyRelatedField(
        queryset=ContactList.objects.all(), many=True, allow_empty=False
    )
    source = serializers.CharField(max_length=100, required=False, default="api")
    resubscribe = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Subscribe: put back a contact who unsubscribed from one of the lists. "
        "Only with their new consent (record how in source); without it such a request is "
        "refused (409).",
    )


class ContactListSerializer(serializers.ModelSerializer):
    class Meta:
        model = ContactList
        fields = ["id", "name", "description", "created_at"]
        read_only_fields = ["created_at"]


class SegmentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Segment
        fields = [
            "id",
            "name",
            "description",
            "statuses",
            "lists",
            "not_lists",
            "conditions",
            "engagement",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # The rules the filter can apply, as the admin form checks them.
        try:
            segment_rules_check(
                **{
                    name: attrs.get(name, getattr(self.instance, name, []))
                    for name in ("statuses", "conditions", "engagement")
                }
            )
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return attrs


class CountSerializer(serializers.Serializer):
    count = serializers.IntegerField()


class SuppressionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Suppression
        fields = ["id", "pattern", "reason", "source", "created_at"]
        read_only_fields = ["created_at"]

    def validate_pattern(self, value: str) -> str:
        try:
            key = suppression_row_clean({"pattern": value.strip()}, {})["key"]
        except RowRejected as exc:
            raise serializers.ValidationError(str(exc)) from None
        if Suppression.objects.filter(pattern=key).exclude(pk=getattr(self.instance, "pk", None)):
            raise serializers.ValidationError("This address or domain is already suppressed.")
        return key


class TemplateSerializer(serializers.ModelSerializer):
    class Meta:
        model = Template
        fields = [
            "id",
            "name",
            "subject",
            "html_body",
            "text_body",
            "sms_body",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]


class PreviewRequestSerializer(serializers.Serializer):
    contact = serializers.PrimaryKeyRelatedField(queryset=Contact.objects.all())


class SmsPreviewSerializer(serializers.Serializer):
    text = serializers.CharField()
    encoding = serializers.ChoiceField(choices=["GSM-7", "UCS-2"])
    segments = serializers.IntegerField()


class PreviewSerializer(serializers.Serializer):
    subject = serializers.CharField()
    text = serializers.CharField()
    html = serializers.CharField(allow_null=True)
    # The SMS tab: null when the template has no SMS body.
    sms = SmsPreviewSerializer(allow_null=True)


class CampaignSerializer(serializers.ModelSerializer):
    lists = serializers.PrimaryKeyRelatedField(
        queryset=ContactList.objects.all(), many=True, required=False
    )
    segments = serializers.PrimaryKeyRelatedField(
        queryset=Segment.objects.all(), many=True, required=False
    )

    class Meta:
        model = Campaign
        fields = [
            "id",
            "name",
            "kind",
            "autoresponder_delay",
            "trigger",
            "date_attribute",
            "date_offset_days",
            "template",
            "track_opens",
            "track_clicks",
            "unique_opens",
            "unique_clicks",
            "lists",
            "segments",
            "exclude_lists",
            "exclude_segments",
            "only_segment",
            "send_limit",
            "dispatcher",
            "pool",
            "status",
            "scheduled_at",
            "paused_reason",
            "started_at",
            "completed_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "unique_opens",
            "unique_clicks",
            "status",
            "scheduled_at",
            "paused_reason",
            "started_at",
            "completed_at",
            "created_at",
            "updated_at",
        ]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        lists = attrs.get("lists", self.instance.lists.all() if self.instance else [])
        segments = attrs.get("segments", self.instance.segments.all() if self.instance else [])
        if not lists and not segments:
            raise serializers.ValidationError(
                {"lists": ["Choose at least one list or segment to send to."]}
            )
        # The model's own cross-field rules (an autoresponder needs a delay,
        # or a date attribute when a date triggers it).
        probe = Campaign(
            **{
                name: attrs.get(name, getattr(self.instance, name, default))
                for name, default in (
                    ("kind", Campaign.Kind.REGULAR),
                    ("autoresponder_delay", None),
                    ("trigger", Campaign.Trigger.LIST_JOINED),
                    ("date_attribute", ""),
                    ("dispatcher", None),
                    ("pool", None),
                    ("template", None),
                )
            }
        )
        try:
            probe.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return attrs


class ScheduleSerializer(serializers.Serializer):
    scheduled_at = serializers.DateTimeField(required=False, allow_null=True)


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")


class ProgressSerializer(serializers.Serializer):
    status = serializers.CharField()
    total = serializers.IntegerField()
    sent = serializers.IntegerField()
    failed = serializers.IntegerField()
    skipped = serializers.IntegerField()
    deferred = serializers.IntegerField()
    in_flight = serializers.IntegerField()
    done = serializers.IntegerField()
    percent = serializers.IntegerField()
    by_status = serializers.DictField(child=serializers.IntegerField())


class CampaignItemSerializer(serializers.ModelSerializer):
    email = serializers.CharField(source="contact.email", read_only=True)

    class Meta:
        model = CampaignItem
        fields = [
            "id",
            "contact",
            "email",
            "status",
            "attempts",
            "first_attempt_at",
            "sent_at",
            "next_attempt_at",
            "smtp_code",
            "smtp_response",
            "skip_reason",
            "possibly_duplicated",
        ]


class DispatcherSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dispatcher
        fields = [
            "id",
            "name",
            "server_name",
            "type",
            "delivery_mode",
            "is_enabled",
            "paused_reason",
            "messages_per_hour",
            "batch_size",
            "connections",
            "consecutive_failures",
            "last_error",
            "from_email",
            "from_name",
            "reply_to",
            "created_at",
            "updated_at",
        ]


class JobRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobRun
        fields = [
            "id",
            "job",
            "started_at",
            "finished_at",
            "items_processed",
            "outcome",
            "error",
            "worker",
        ]


class JobSerializer(serializers.Serializer):
    key = serializers.CharField()
    task = serializers.CharField()
    label = serializers.CharField()
    runs_by_hand = serializers.BooleanField()


class JobActionSerializer(serializers.Serializer):
    action = serializers.CharField()
    target = serializers.CharField()
    at = serializers.DateTimeField()


BULK_STATUSES = ("created", "updated", "rejected")
