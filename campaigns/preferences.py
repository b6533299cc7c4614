"""The manage-subscriptions page behind the footer link: a contact leaves
some of their lists, comes back to one they left, or leaves all mail,
without logging in, through a link signed for them alone.

Leaving a list marks the subscription unsubscribed (when, and through
this page), so no campaign generates an item for it again, and no import
or API call silently puts them back; it also skips the contact's waiting
items of campaigns that now reach them through no list: the change holds
before the next send. An item already claimed into a batch is checked at
send time (campaigns.services._batch_left_lists).
"""

from __future__ import annotations

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import salted_hmac

from .models import Campaign, CampaignItem, Contact, ContactList, Subscription

PREFERENCES_SALT = "herald.preferences"
SKIP_REASON = "unsubscribed"
_WAITING = (CampaignItem.Status.PENDING, CampaignItem.Status.DEFERRED)


def _signer() -> signing.Signer:
    return signing.Signer(salt=PREFERENCES_SALT)


def preferences_url(*, contact_id: int) -> str:
    """The "Manage subscriptions" link for one contact. It does not expire:
    a link in a year-old email must still let its reader leave."""
    signed = _signer().sign(str(contact_id))
    return settings.HERALD_PUBLIC_URL + reverse("campaigns:preferences", args=[signed])


class PreferenceLinks:
    """``preferences_url`` for a whole batch: the URL pattern reversed once
    and the signing key derived once, the same links at a fraction of the
    cost per message."""

    def __init__(self) -> None:
        signer = _signer()
        self._hmac = salted_hmac(
            signer.salt + "signer", b"", signer.key, algorithm=signer.algorithm
        )
        path = reverse("campaigns:preferences", args=["SIGNED"])
        self.before, _, self.after = (settings.HERALD_PUBLIC_URL + path).rpartition("SIGNED")
        self.sep = signer.sep

    def url(self, contact_id: int | None) -> str:
        if contact_id is None:
            return self.before + "preview" + self.after  # an unsaved contact: leads nowhere
        value = str(contact_id)
        mac = self._hmac.copy()
        mac.update(value.encode())
        signature = signing.b64_encode(mac.digest()).decode()
        return f"{self.before}{value}{self.sep}{signature}{self.after}"


def preferences_contact(*, signed: str) -> Contact | None:
    """The contact a link was signed for; None for a forged or altered one."""
    try:
        contact_id = int(_signer().unsign(signed))
    except (signing.BadSignature, ValueError):
        return None
    return Contact.objects.filter(pk=contact_id).first()


def contact_lists(*, contact: Contact) -> list[tuple[ContactList, bool]]:
    """The lists the contact is on or has left, each with whether they are
    subscribed now: the page offers a way back to those they left."""
    rows = (
        Subscription.objects.filter(contact=contact)
        .select_related("contact_list")
        .order_by("contact_list__name")
    )
    return [(row.contact_list, row.is_subscribed) for row in rows]


def _waiting_items_skip(contact: Contact) -> int:
    """Skip the contact's waiting items of campaigns none of whose lists
    still holds them. A claimed item is not touched (its batch is being
    sent); the conditional update leaves it alone even if claimed meanwhile."""
    still_reached = Campaign.objects.filter(
        lists__subscription__contact=contact, lists__subscription__unsubscribed_at__isnull=True
    ).values("pk")
    return (
        CampaignItem.objects.filter(contact=contact, status__in=_WAITING)
        .exclude(campaign_id__in=still_reached)
        .update(status=CampaignItem.Status.SKIPPED, skip_reason=SKIP_REASON, next_attempt_at=None)
    )


def subscriptions_leave(*, contact: Contact, list_ids: list[int], via: str) -> list[str]:
    """Mark the contact unsubscribed from those of ``list_ids`` they are on
    (the row stays, as the record of their choice); returns the names of
    the lists they left. Their waiting items that no list reaches any
    more are skipped in the same transaction."""
    with transaction.atomic():
        leaving = Subscription.objects.filter(
            contact=contact, contact_list_id__in=list_ids, unsubscribed_at__isnull=True
        )
        names = sorted(leaving.values_list("contact_list__name", flat=True))
        leaving.update(unsubscribed_at=timezone.now(), unsubscribed_via=via)
        _waiting_items_skip(contact)
    return names


def subscriptions_rejoin(*, contact: Contact, list_ids: list[int], source: str) -> list[str]:
    """Subscribe the contact again to lists they had left: a new consent,
    so it is dated now and its source recorded. Returns the list names."""
    rejoining = Subscription.objects.filter(
        contact=contact, contact_list_id__in=list_ids, unsubscribed_at__isnull=False
    )
    names = sorted(rejoining.values_list("contact_list__name", flat=True))
    rejoining.update(
        unsubscribed_at=None, unsubscribed_via="", created_at=timezone.now(), source=source
    )
    return names


def subscriptions_keep(*, contact: Contact, list_ids: set[int]) -> tuple[list[str], list[str]]:
    """The page's choice: subscribed to ``list_ids`` only, of the lists the
    contact is on or has left. Returns (names left, names rejoined)."""
    theirs = set(
        Subscription.objects.filter(contact=contact).values_list("contact_list_id", flat=True)
    )
    with transaction.atomic():
        left = subscriptions_leave(
            contact=contact, list_ids=sorted(theirs - list_ids), via=Subscription.Via.PREFERENCES
        )
        rejoined = subscriptions_rejoin(
            contact=contact, list_ids=sorted(theirs & list_ids), source="manage subscriptions page"
        )
    return left, rejoined


def contact_unsubscribe_all(*, contact: Contact) -> None:
    """No more campaigns at all: the contact's status, which every send
    checks, and their waiting items skipped at once."""
    with transaction.atomic():
        Contact.objects.filter(pk=contact.pk, status=Contact.Status.ACTIVE).update(
            status=Contact.Status.UNSUBSCRIBED,
            source=contact.source or "unsubscribe:preferences",
        )
        CampaignItem.objects.filter(contact=contact, status__in=_WAITING).update(
            status=CampaignItem.Status.SKIPPED, skip_reason=SKIP_REASON, next_attempt_at=None
        )


def contacts_unsubscribed_from(*, campaign_id: int, contact_ids: list[int]) -> set[int]:
    """Of ``contact_ids``, those no list of the campaign holds any more."""
    still = Subscription.objects.filter(
        contact_id__in=contact_ids,
        contact_list__campaigns=campaign_id,
        unsubscribed_at__isnull=True,
    ).values_list("contact_id", flat=True)
    return set(contact_ids) - set(still)
