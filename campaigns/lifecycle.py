"""What a marketer does to a campaign from its page besides schedule, pause,
resume and duplicate (those are in services.py): unschedule, cancel, reset
failed recipients to unsent, resend to all. Each moves rows only by
conditional updates, so a double click or a job running meanwhile cannot
apply it twice or to a campaign in another state."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from .models import Campaign, CampaignItem
from .services import campaign_duplicate, campaign_schedule

S = CampaignItem.Status
C = Campaign.Status

CANCELLABLE = (C.SCHEDULED, C.GENERATING, C.SENDING, C.PAUSED)
RESETTABLE = (C.SENDING, C.PAUSED, C.COMPLETED)
RESENDABLE = (C.COMPLETED, C.CANCELLED)


def _refuse(campaign: Campaign, verb: str, allowed: tuple[str, ...]) -> ValidationError:
    names = ", ".join(C(s).label.lower() for s in allowed)
    return ValidationError(
        f"Cannot {verb} a campaign that is {campaign.get_status_display().lower()}; "
        f"only {names} campaigns can be.",
        code="status",
    )


def campaign_unschedule(*, campaign: Campaign) -> None:
    """Back to draft before it starts; nothing was generated yet."""
    moved = Campaign.objects.filter(pk=campaign.pk, status=C.SCHEDULED).update(
        status=C.DRAFT, scheduled_at=None
    )
    if moved != 1:
        campaign.refresh_from_db(fields=["status"])
        raise _refuse(campaign, "unschedule", (C.SCHEDULED,))


def campaign_cancel(*, campaign: Campaign) -> None:
    """Stop for good: no further message leaves. Items in a batch being
    sent right now are given back by that batch (it rechecks the campaign
    every few messages) and stay unsent."""
    moved = Campaign.objects.filter(pk=campaign.pk, status__in=CANCELLABLE).update(
        status=C.CANCELLED, paused_reason=""
    )
    if moved != 1:
        campaign.refresh_from_db(fields=["status"])
        raise _refuse(campaign, "cancel", CANCELLABLE)


def campaign_reset_failed(*, campaign: Campaign) -> int:
    """Give failed recipients another go: their items go back to pending
    (attempts and errors cleared) and a completed campaign sends again.
    Addresses suppressed meanwhile (a 5.1.1 adds one) are skipped at send
    time as always. Returns how many were reset."""
    with transaction.atomic():
        locked = Campaign.objects.select_for_update().filter(pk=campaign.pk).first()
        if locked is None or locked.status not in RESETTABLE:
            campaign.refresh_from_db(fields=["status"])
            raise _refuse(campaign, "reset failed recipients of", RESETTABLE)
        reset = CampaignItem.objects.filter(campaign=locked, status=S.FAILED).update(
            status=S.PENDING,
            attempts=0,
            batch=None,
            first_attempt_at=None,
            next_attempt_at=None,
            sending_started_at=None,
            smtp_code=None,
            smtp_response="",
        )
        if not reset:
            raise ValidationError("No failed recipient to reset.", code="empty")
        if locked.status == C.COMPLETED:
            Campaign.objects.filter(pk=locked.pk).update(
                status=C.SENDING, completed_at=None, consecutive_errors=0
            )
    return reset


def campaign_resend_all(*, campaign: Campaign, user: AbstractBaseUser) -> Campaign:
    """Send a finished campaign again to its whole audience, as it is now.

    It becomes a new campaign, scheduled at once, rather than the old items
    put back: every message gets a new token, so mailbox providers do not
    drop it as a duplicate Message-ID; the links in the first mailing keep
    working; and the first report stays as it was."""
    if campaign.status not in RESENDABLE:
        raise _refuse(campaign, "resend", RESENDABLE)
    with transaction.atomic():
        copy = campaign_duplicate(campaign=campaign, user=user)
        copy.name = f"{campaign.name} (resend)"[:200]
        copy.save(update_fields=["name", "updated_at"])
        campaign_schedule(campaign=copy)
    copy.refresh_from_db()
    return copy
