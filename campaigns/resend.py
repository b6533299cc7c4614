"""Sending again: all recipients of a campaign, or only its failed ones.

"Set all recipients to unsent" is a deliberate resend: every finished
item goes back to pending with a new token (so a new Message-ID: mailbox
providers drop a message whose Message-ID they have already delivered),
and the campaign sends again. "Set erroneous entries back to unsent"
retries only the failed ones, keeping their token. Suppressed,
unsubscribed and bounced contacts are still skipped at send time.

Items in flight (claimed by a batch) and items still waiting (pending,
deferred) are never touched, so nothing is sent twice by accident.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import CharField, Func, QuerySet, Value
from django.db.models.functions import Cast, Replace

from .models import Campaign, CampaignItem

S = CampaignItem.Status
FINISHED = (S.SENT, S.FAILED, S.SKIPPED, S.BOUNCED)
# What can be sent again: a campaign that has sent (or is sending) its audience.
RESENDABLE = (Campaign.Status.SENDING, Campaign.Status.COMPLETED, Campaign.Status.PAUSED)

_UNSENT = {
    "status": S.PENDING,
    "batch": None,
    "attempts": 0,
    "next_attempt_at": None,
    "sending_started_at": None,
    "possibly_duplicated": False,
    "first_attempt_at": None,
    "sent_at": None,
    "smtp_code": None,
    "smtp_response": "",
    "queue_id": "",
    "skip_reason": "",
}


def campaign_items_resettable(*, campaign: Campaign) -> QuerySet[CampaignItem]:
    return CampaignItem.objects.filter(campaign=campaign, status__in=FINISHED)


def campaign_items_failed(*, campaign: Campaign) -> QuerySet[CampaignItem]:
    return CampaignItem.objects.filter(campaign=campaign, status=S.FAILED)


def _reopen(campaign: Campaign) -> Campaign:
    """Lock the campaign and make a completed one send again."""
    locked = Campaign.objects.select_for_update().get(pk=campaign.pk)
    if locked.kind != Campaign.Kind.REGULAR or locked.status not in RESENDABLE:
        raise ValidationError(
            f"Only a campaign that is sending, paused or completed can send again; "
            f"“{locked.name}” is {locked.get_status_display().lower()}."
        )
    if locked.status == Campaign.Status.COMPLETED:
        Campaign.objects.filter(pk=locked.pk).update(
            status=Campaign.Status.SENDING, completed_at=None, consecutive_errors=0
        )
    return locked


def campaign_items_reset(*, campaign: Campaign) -> int:
    """Set all finished recipients back to unsent; returns how many."""
    with transaction.atomic():
        _reopen(campaign)
        fresh_token = Replace(
            Cast(Func(function="gen_random_uuid"), output_field=CharField()), Value("-"), Value("")
        )
        return campaign_items_resettable(campaign=campaign).update(**_UNSENT, token=fresh_token)


def campaign_failed_retry(*, campaign: Campaign) -> int:
    """Set the failed recipients back to unsent; returns how many."""
    with transaction.atomic():
        _reopen(campaign)
        return campaign_items_failed(campaign=campaign).update(**_UNSENT)


def campaign_failed_retry_after_sending(*, campaign: Campaign) -> int:
    """The dispatcher option "set erroneous entries back to unsent after
    sending": when a campaign has nothing left to send, its failed items
    get one more try. Only items that failed at their first and only
    attempt qualify, and they keep that attempt, so a retry that fails
    again is final; never a loop."""
    retry = {**_UNSENT}
    del retry["attempts"]
    return campaign_items_failed(campaign=campaign).filter(attempts=1).update(**retry)
