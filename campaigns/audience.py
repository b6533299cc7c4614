"""Who a campaign goes to: its lists and segments, minus its exclusions.

Every rule is a predicate on the contact row itself (list membership as
EXISTS), so item generation can still page the audience by contact id
with LIMIT, and each page costs the same however large the audience."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import EmptyResultSet, ValidationError
from django.db.models import BooleanField, Exists, OuterRef, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.fields.json import KeyTextTransform
from django.utils import timezone

from .models import (
    SEGMENT_ACTIVITIES,
    SEGMENT_OPERATORS,
    Campaign,
    CampaignItem,
    Contact,
    Segment,
    Subscription,
)

ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9_. -]{1,64}$")
MAX_DAYS = 3650


def segment_rules_check(*, statuses: Any, conditions: Any, engagement: Any = ()) -> None:
    """Refuse, with every reason (by field), rules the filter could not apply."""
    errors = {
        "statuses": _status_errors(statuses),
        "conditions": _condition_errors(conditions),
        "engagement": _engagement_errors(engagement),
    }
    errors = {name: found for name, found in errors.items() if found}
    if errors:
        raise ValidationError(errors, code="segment")


def _status_errors(statuses: Any) -> list[str]:
    if not isinstance(statuses, list) or not all(
        s in Contact.Status.values for s in statuses if isinstance(s, str)
    ):
        return [f"Statuses must be a list of: {', '.join(Contact.Status.values)}."]
    if not all(isinstance(s, str) for s in statuses):
        return ['Statuses must be names, e.g. "active".']
    return []


def _condition_errors(conditions: Any) -> list[str]:
    if not isinstance(conditions, list):
        return ["Conditions must be a list."]
    errors: list[str] = []
    for i, rule in enumerate(conditions, start=1):
        if not isinstance(rule, dict):
            errors.append(f"Condition {i}: must be an object with attribute, op and value.")
            continue
        name, op = rule.get("attribute"), rule.get("op")
        if not isinstance(name, str) or not ATTRIBUTE_NAME.match(name) or "__" in name:
            errors.append(f"Condition {i}: {name!r} is not an attribute name.")
        if op not in SEGMENT_OPERATORS:
            errors.append(
                f"Condition {i}: unknown operator {op!r}; use one of "
                f"{', '.join(SEGMENT_OPERATORS)}."
            )
        elif op not in ("exists", "missing") and "value" not in rule:
            errors.append(f"Condition {i}: {op} needs a value.")
        elif op == "contains" and not isinstance(rule.get("value"), str):
            errors.append(f"Condition {i}: contains needs a text value.")
        elif isinstance(rule.get("value"), dict | list):
            errors.append(f"Condition {i}: the value must be text, a number or true/false.")
    return errors


def _engagement_errors(engagement: Any) -> list[str]:
    if not isinstance(engagement, list | tuple):
        return ["Engagement rules must be a list."]
    errors: list[str] = []
    for i, rule in enumerate(engagement, start=1):
        if not isinstance(rule, dict):
            errors.append(f"Engagement rule {i}: must be an object with an activity.")
            continue
        unknown = set(rule) - {"activity", "campaign", "days"}
        if unknown:
            errors.append(f"Engagement rule {i}: unknown field(s) {', '.join(sorted(unknown))}.")
        if rule.get("activity") not in SEGMENT_ACTIVITIES:
            errors.append(
                f"Engagement rule {i}: unknown activity {rule.get('activity')!r}; use one of "
                f"{', '.join(SEGMENT_ACTIVITIES)}."
            )
        days = rule.get("days")
        if days is not None and (
            not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS
        ):
            errors.append(f"Engagement rule {i}: days must be a whole number from 1 to {MAX_DAYS}.")
        campaign = rule.get("campaign")
        if campaign is not None and (
            not isinstance(campaign, int)
            or isinstance(campaign, bool)
            or not Campaign.objects.filter(pk=campaign).exists()
        ):
            errors.append(f"Engagement rule {i}: there is no campaign {campaign!r}.")
    return errors


def _theirs(after: int) -> dict[str, Any]:
    """Rows of the contact the subquery is asked about. Paging by contact id
    bounds them too (``after``), which the query planner does not infer: a
    merge join would otherwise walk the rows of every contact before the
    page, and each page would cost more than the one before it."""
    rows: dict[str, Any] = {"contact_id": OuterRef("pk")}
    if after:
        rows["contact_id__gt"] = after
    return rows


def _on_lists(list_ids: list[int], after: int = 0) -> Exists:
    # A row with unsubscribed_at is the record of leaving, not a subscription.
    return Exists(
        Subscription.objects.filter(
            **_theirs(after), contact_list_id__in=list_ids, unsubscribed_at__isnull=True
        )
    )


# Which item field records each activity: the first human open and click
# (machine fetches never set them), and when the message was sent.
_ACTIVITY_FIELD = {"opened": "opened_at", "clicked": "clicked_at", "sent": "sent_at"}


def _did(field: str, rule: dict[str, Any], after: int) -> Q:
    """The contact has an item with ``field`` set, of the rule's campaign
    if it names one, within its last days if it gives them."""
    items = CampaignItem.objects.filter(**_theirs(after), **{f"{field}__isnull": False})
    if rule.get("campaign") is not None:
        items = items.filter(campaign_id=rule["campaign"])
    if rule.get("days") is not None:
        since = timezone.now() - timedelta(days=rule["days"])
        items = items.filter(**{f"{field}__gte": since})
    return Q(Exists(items))


def _engagement_q(rule: dict[str, Any], after: int) -> Q:
    activity = rule["activity"]
    if activity == "sent_not_opened":
        return _did("sent_at", rule, after) & ~_did("opened_at", rule, after)
    if activity.startswith("not_"):
        return ~_did(_ACTIVITY_FIELD[activity[4:]], rule, after)
    return _did(_ACTIVITY_FIELD[activity], rule, after)


def _condition_q(rule: dict[str, Any], alias: str) -> Q:
    name, op, value = rule["attribute"], rule["op"], rule.get("value")
    # has_key and @> take the name as a value, never as SQL or a path.
    if op == "exists":
        return Q(attributes__has_key=name)
    if op == "missing":
        return ~Q(attributes__has_key=name)
    if op == "equals":
        return Q(attributes__contains={name: value})
    if op == "not_equals":
        return ~Q(attributes__contains={name: value})
    return Q(**{f"{alias}__icontains": value})


def segment_q(segment: Segment, prefix: str = "s", after: int = 0) -> tuple[Q, dict[str, Any]]:
    """The segment as a filter on contacts (those with an id above ``after``
    only), and the annotations it needs (named from `prefix`, so several
    segments can share one query)."""
    q = Q()
    annotations: dict[str, Any] = {}
    if segment.statuses:
        q &= Q(status__in=segment.statuses)
    list_ids = [cl.pk for cl in segment.lists.all()]
    if list_ids:
        q &= Q(_on_lists(list_ids, after))
    not_ids = [cl.pk for cl in segment.not_lists.all()]
    if not_ids:
        q &= ~Q(_on_lists(not_ids, after))
    for i, rule in enumerate(segment.conditions):
        alias = f"{prefix}_attr_{i}"
        if rule["op"] == "contains":
            annotations[alias] = KeyTextTransform(rule["attribute"], "attributes")
        q &= _condition_q(rule, alias)
    for rule in segment.engagement:
        q &= _engagement_q(rule, after)
    return q, annotations


def segment_contacts(segment: Segment) -> QuerySet[Contact]:
    q, annotations = segment_q(segment)
    return Contact.objects.annotate(**annotations).filter(q)


def segment_count(*, segment: Segment) -> int:
    return segment_contacts(segment).count()


def campaign_has_rules(campaign: Campaign) -> bool:
    """True when more than plain lists decide the audience."""
    return (
        campaign.only_segment_id is not None
        or campaign.segments.exists()
        or campaign.exclude_lists.exists()
        or campaign.exclude_segments.exists()
    )


def campaign_audience(campaign: Campaign, after: int = 0) -> QuerySet[Contact]:
    """Contacts on any of the campaign's lists or in any of its segments,
    and on none of its excluded lists or segments (with an id above
    ``after``)."""
    annotations: dict[str, Any] = {}
    included: list[Q] = []
    list_ids = list(campaign.lists.values_list("pk", flat=True))
    if list_ids:
        included.append(Q(_on_lists(list_ids, after)))
    for n, segment in enumerate(campaign.segments.all()):
        q, extra = segment_q(segment, prefix=f"in{n}", after=after)
        included.append(q)
        annotations.update(extra)
    if not included:
        return Contact.objects.none()
    return _restricted(campaign, _any(included), annotations, after)


def _restricted(
    campaign: Campaign, wanted: Q, annotations: dict[str, Any], after: int = 0
) -> QuerySet[Contact]:
    """Contacts matching ``wanted``, on none of the campaign's excluded lists
    or segments, and in its only-segment if it has one."""
    excluded: list[Q] = []
    excluded_ids = list(campaign.exclude_lists.values_list("pk", flat=True))
    if excluded_ids:
        excluded.append(Q(_on_lists(excluded_ids, after)))
    for n, segment in enumerate(campaign.exclude_segments.all()):
        q, extra = segment_q(segment, prefix=f"out{n}", after=after)
        excluded.append(q)
        annotations.update(extra)
    if campaign.only_segment is not None:
        q, extra = segment_q(campaign.only_segment, prefix="only", after=after)
        wanted &= q
        annotations.update(extra)
    contacts = Contact.objects.annotate(**annotations).filter(wanted)
    if after:
        contacts = contacts.filter(pk__gt=after)
    if excluded:
        contacts = contacts.exclude(_any(excluded))
    return contacts


def _any(parts: list[Q]) -> Q:
    combined = parts[0]
    for part in parts[1:]:
        combined |= part
    return combined


_NOBODY = "SELECT NULL::bigint AS id, NULL::text AS email, NULL::text AS status WHERE false"


def _sql(contacts: QuerySet[Contact]) -> tuple[str, list[Any]]:
    try:
        sql, params = contacts.query.sql_with_params()
    except EmptyResultSet:  # no list and no segment: nobody
        return _NOBODY, []
    return sql, list(params)


def audience_page_sql(*, campaign: Campaign, after: int, size: int) -> tuple[str, list[Any]]:
    """One page of the audience as SQL: (id, email, status) by contact id."""
    page = campaign_audience(campaign, after=after).order_by("pk")
    return _sql(page.values_list("pk", "email", "status")[:size])


def audience_sql(*, campaign: Campaign) -> tuple[str, list[Any]]:
    """The whole audience as SQL: (id, email, status)."""
    return _sql(campaign_audience(campaign).values_list("pk", "email", "status"))


# --- autoresponders ------------------------------------------------------------

# A date trigger fires once per contact, on the day the attribute's date
# plus the offset comes round, and only for days since the autoresponder
# started: switching it on must not mail everyone whose date is past.
# (herald_try_date is migration 0004's: NULL for a date that does not exist.)
_DATE_DUE = (
    '("campaigns_contact"."attributes" ->> %s) ~ \'^[0-9]{4}-[0-9]{2}-[0-9]{2}$\' AND '
    'herald_try_date("campaigns_contact"."attributes" ->> %s) + %s::integer '
    "BETWEEN %s AND %s"
)


def _joined_since(campaign: Campaign, now: datetime) -> Q:
    """Subscribed to one of the lists after the autoresponder started, at
    least its delay ago, and still on it."""
    assert campaign.started_at is not None and campaign.autoresponder_delay is not None
    joined = Subscription.objects.filter(
        contact_id=OuterRef("pk"),
        contact_list_id__in=list(campaign.lists.values_list("pk", flat=True)),
        unsubscribed_at__isnull=True,
        created_at__gte=campaign.started_at,
        created_at__lte=now - campaign.autoresponder_delay,
    )
    return Q(Exists(joined))


def autoresponder_page_sql(
    *, campaign: Campaign, now: datetime, size: int
) -> tuple[str, list[Any]]:
    """Up to ``size`` contacts whose trigger is due and who have no item of
    the autoresponder yet, as SQL: (id, email, status). No cursor and no
    order: each page's items take its contacts out of the next one.

    Joined a list: those who joined one of its lists, limited by its
    exclusions and its only-segment. Date attribute: its whole audience as
    a campaign's (lists, segments, exclusions, only-segment) whose date
    is due."""
    fresh = ~Q(Exists(CampaignItem.objects.filter(campaign=campaign, contact_id=OuterRef("pk"))))
    if campaign.trigger == Campaign.Trigger.DATE_ATTRIBUTE:
        assert campaign.started_at is not None
        attribute = campaign.date_attribute
        due = RawSQL(
            _DATE_DUE,
            [
                attribute,
                attribute,
                campaign.date_offset_days,
                campaign.started_at.date(),
                now.date(),
            ],
            output_field=BooleanField(),
        )
        contacts = campaign_audience(campaign).filter(fresh, due)
    else:
        contacts = _restricted(campaign, _joined_since(campaign, now) & fresh, {})
    return _sql(contacts.values_list("pk", "email", "status")[:size])
