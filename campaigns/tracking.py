"""Open and click tracking.

The template's HTML source is rewritten once per batch: each static link
becomes ``{{ tracking_url }}c/<link id>/`` and a pixel ``{{ tracking_url }}o.gif``
goes before ``</body>``; each message then only fills in its recipient's
``tracking_url``, which carries the item token and its signature. A click
URL names a link by number, never by address, so there is no open
redirect; a forged or altered URL records nothing.
"""

from __future__ import annotations

import html
import ipaddress
import re
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from .models import Campaign, CampaignItem, TrackedLink, TrackingEvent

_SALT = "herald.tracking"

# href="..." or href='...' inside an <a ...> tag.
_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)

# What fetches a pixel or follows a link without a person: security
# gateways that pre-click every link, and link preview bots.
_MACHINE_AGENTS = re.compile(
    r"bot|crawler|spider|preview|scanner|barracuda|mimecast|proofpoint|"
    r"symantec|forcepoint|trendmicro|sophos|fortinet|safelinks|python-requests|curl|wget",
    re.IGNORECASE,
)
# Apple Mail Privacy Protection loads every image through Apple's proxies.
_APPLE_PROXIES = ipaddress.ip_network("17.0.0.0/8")


def tracking_key(token: str) -> str:
    return f"{token}.{_signature(token)}"


def _signature(token: str) -> str:
    return salted_hmac(_SALT, token).hexdigest()[:16]


def tracking_token(key: str) -> str | None:
    """The item token of a tracking key, or None if the key was not signed here."""
    token, _, signature = key.partition(".")
    if not token or not constant_time_compare(signature, _signature(token)):
        return None
    return token


def tracking_url(token: str) -> str:
    return f"{settings.HERALD_PUBLIC_URL}/t/{tracking_key(token)}/"


def tracking_source(*, campaign: Campaign, html_source: str) -> str:
    """The HTML source with the campaign's tracking added, as the flags say."""
    if campaign.track_clicks:
        html_source = _links_rewrite(campaign, html_source)
    if campaign.track_opens:
        html_source = _pixel_insert(html_source)
    return html_source


def _trackable(url: str) -> bool:
    # Placeholders make a per-recipient address that cannot be looked up by
    # number; the unsubscribe link is one of them and must stay direct.
    if "{{" in url or "{%" in url:
        return False
    return url.lower().startswith(("http://", "https://"))


def _links_rewrite(campaign: Campaign, html_source: str) -> str:
    urls = {html.unescape(m.group(3)).strip() for m in _HREF.finditer(html_source)}
    urls = {u for u in urls if _trackable(u) and len(u) <= 2000}
    if not urls:
        return html_source
    TrackedLink.objects.bulk_create(
        [TrackedLink(campaign=campaign, url=u) for u in urls], ignore_conflicts=True
    )
    ids = dict(TrackedLink.objects.filter(campaign=campaign, url__in=urls).values_list("url", "pk"))

    def replace(match: re.Match[str]) -> str:
        url = html.unescape(match.group(3)).strip()
        if url not in ids:
            return match.group(0)
        quote = match.group(2)
        return f"{match.group(1)}{quote}{{{{ tracking_url }}}}c/{ids[url]}/{quote}"

    return _HREF.sub(replace, html_source)


def _pixel_insert(html_source: str) -> str:
    pixel = (
        '<img src="{{ tracking_url }}o.gif" width="1" height="1" alt="" '
        'style="display:block;border:0;width:1px;height:1px">'
    )
    matches = list(_BODY_END.finditer(html_source))
    if not matches:
        return html_source + pixel
    at = matches[-1].start()
    return html_source[:at] + pixel + html_source[at:]


def is_machine(*, user_agent: str, address: str, method: str) -> bool:
    if method == "HEAD" or not user_agent or _MACHINE_AGENTS.search(user_agent):
        return True
    try:
        return ipaddress.ip_address(address) in _APPLE_PROXIES
    except ValueError:
        return False


def tracking_record_open(*, key: str, user_agent: str, machine: bool) -> bool:
    """Record an open; False when the key is not ours or its item is gone."""
    item = _item_for(key)
    if item is None:
        return False
    _event_record(item, TrackingEvent.Kind.OPEN, None, user_agent, machine)
    return True


def tracking_record_click(*, key: str, link_id: int, user_agent: str, machine: bool) -> str | None:
    """Record a click; returns the link's destination, or None when the key
    or the link is not one of this item's campaign."""
    item = _item_for(key)
    if item is None:
        return None
    link = TrackedLink.objects.filter(pk=link_id, campaign_id=item.campaign_id).first()
    if link is None:
        return None
    _event_record(item, TrackingEvent.Kind.CLICK, link, user_agent, machine)
    return link.url


def tracking_record_provider_event(
    *, item: CampaignItem, kind: str, event_id: str, url: str = "", user_agent: str = ""
) -> bool:
    """An open or a click an email service saw and reported by webhook.
    Recorded once per provider event id (False for a repeat); a click on a
    link Herald did not rewrite is recorded against that address."""
    link = None
    if kind == TrackingEvent.Kind.CLICK and url.startswith(("http://", "https://")):
        link, _ = TrackedLink.objects.get_or_create(campaign_id=item.campaign_id, url=url[:2000])
    machine = bool(user_agent and _MACHINE_AGENTS.search(user_agent))
    try:
        with transaction.atomic():
            _event_record(item, kind, link, user_agent, machine, provider_event_id=event_id)
    except IntegrityError:
        return False  # the provider's retry, or a replay
    return True


def item_record_delivery(*, item: CampaignItem) -> bool:
    """The email service says the message reached the mailbox: noted on
    the item, once, and never over a later state it already reported."""
    return bool(
        CampaignItem.objects.filter(pk=item.pk, provider_status__in=("", "accepted", "sent"))
        .exclude(status__in=(CampaignItem.Status.BOUNCED, CampaignItem.Status.FAILED))
        .update(provider_status="delivered")
    )


def _item_for(key: str) -> CampaignItem | None:
    token = tracking_token(key)
    if token is None:
        return None
    return CampaignItem.objects.filter(token=token).only("pk", "campaign_id").first()


def _event_record(
    item: CampaignItem,
    kind: str,
    link: TrackedLink | None,
    user_agent: str,
    machine: bool,
    provider_event_id: str = "",
) -> None:
    now = timezone.now()
    with transaction.atomic():
        TrackingEvent.objects.create(
            item=item,
            kind=kind,
            link=link,
            machine=machine,
            user_agent=user_agent[:255],
            provider_event_id=provider_event_id[:200],
        )
        if machine:
            return
        # A person who clicked has opened, even when images were blocked.
        _first_time(item, "opened_at", "unique_opens", now)
        if kind == TrackingEvent.Kind.CLICK:
            _first_time(item, "clicked_at", "unique_clicks", now)


def _first_time(item: CampaignItem, stamp: str, counter: str, now: datetime) -> None:
    # The conditional update decides who was first when two requests race.
    first = CampaignItem.objects.filter(pk=item.pk, **{f"{stamp}__isnull": True}).update(
        **{stamp: now}
    )
    if first:
        Campaign.objects.filter(pk=item.campaign_id).update(**{counter: F(counter) + 1})
