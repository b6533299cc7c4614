"""Who a campaign goes to: its lists and segments, minus its exclusions.

Every rule is a predicate on the contact row itself (list membership as
EXISTS), so item generation can still page the audience by contact id
with LIMIT, and each page costs the same however large the audience."""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import EmptyResultSet, ValidationError
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform

from .models import SEGMENT_OPERATORS, Campaign, Contact, Segment, Subscription

ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9_. -]{1,64}$")


def segment_rules_check(*, statuses: Any, conditions: Any) -> None:
    """Refuse, with every reason, rules the filter could not apply."""
    errors: list[str] = []
    if not isinstance(statuses, list) or not all(
        s in Contact.Status.values for s in statuses if isinstance(s, str)
    ):
        errors.append(f"Statuses must be a list of: {', '.join(Contact.Status.values)}.")
    elif not all(isinstance(s, str) for s in statuses):
        errors.append('Statuses must be names, e.g. "active".')
    if not isinstance(conditions, list):
        errors.append("Conditions must be a list.")
        conditions = []
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
    if errors:
        raise ValidationError(errors, code="segment")


def _on_lists(list_ids: list[int]) -> Exists:
    return Exists(
        Subscription.objects.filter(contact_id=OuterRef("pk"), contact_list_id__in=list_ids)
    )


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


def segment_q(segment: Segment, prefix: str = "s") -> tuple[Q, dict[str, Any]]:
    """The segment as a filter on contacts, and the annotations it needs
    (named from `prefix`, so several segments can share one query)."""
    q = Q()
    annotations: dict[str, Any] = {}
    if segment.statuses:
        q &= Q(status__in=segment.statuses)
    list_ids = [cl.pk for cl in segment.lists.all()]
    if list_ids:
        q &= Q(_on_lists(list_ids))
    not_ids = [cl.pk for cl in segment.not_lists.all()]
    if not_ids:
        q &= ~Q(_on_lists(not_ids))
    for i, rule in enumerate(segment.conditions):
        alias = f"{prefix}_attr_{i}"
        if rule["op"] == "contains":
            annotations[alias] = KeyTextTransform(rule["attribute"], "attributes")
        q &= _condition_q(rule, alias)
    return q, annotations


def segment_contacts(segment: Segment) -> QuerySet[Contact]:
    q, annotations = segment_q(segment)
    return Contact.objects.annotate(**annotations).filter(q)


def segment_count(*, segment: Segment) -> int:
    return segment_contacts(segment).count()


def campaign_has_rules(campaign: Campaign) -> bool:
    """True when more than plain lists decide the audience."""
    return (
        campaign.segments.exists()
        or campaign.exclude_lists.exists()
        or campaign.exclude_segments.exists()
    )


def campaign_audience(campaign: Campaign) -> QuerySet[Contact]:
    """Contacts on any of the campaign's lists or in any of its segments,
    and on none of its excluded lists or segments."""
    annotations: dict[str, Any] = {}
    included: list[Q] = []
    list_ids = list(campaign.lists.values_list("pk", flat=True))
    if list_ids:
        included.append(Q(_on_lists(list_ids)))
    for n, segment in enumerate(campaign.segments.all()):
        q, extra = segment_q(segment, prefix=f"in{n}")
        included.append(q)
        annotations.update(extra)
    excluded: list[Q] = []
    excluded_ids = list(campaign.exclude_lists.values_list("pk", flat=True))
    if excluded_ids:
        excluded.append(Q(_on_lists(excluded_ids)))
    for n, segment in enumerate(campaign.exclude_segments.all()):
        q, extra = segment_q(segment, prefix=f"out{n}")
        excluded.append(q)
        annotations.update(extra)
    if not included:
        return Contact.objects.none()
    contacts = Contact.objects.annotate(**annotations).filter(_any(included))
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
    page = campaign_audience(campaign).filter(pk__gt=after).order_by("pk")
    return _sql(page.values_list("pk", "email", "status")[:size])


def audience_sql(*, campaign: Campaign) -> tuple[str, list[Any]]:
    """The whole audience as SQL: (id, email, status)."""
    return _sql(campaign_audience(campaign).values_list("pk", "email", "status"))
