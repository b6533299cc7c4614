"""Manage subscriptions, from the footer link: without logging in, a
contact sees their lists and leaves some or all; what they leave holds
before the next send; a link not signed for them is refused."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest
from django.test import Client

from campaigns import services
from campaigns.models import Campaign, CampaignItem, Contact, ContactList, Subscription
from campaigns.preferences import contacts_unsubscribed_from, preferences_url
from dispatchers.models import Dispatcher
from tests.helpers import make_audience, make_campaign, make_dispatcher, make_smtp_server
from tests.smtp import SmtpSink

pytestmark = pytest.mark.django_db
S = CampaignItem.Status


@pytest.fixture
def lists() -> dict[str, ContactList]:
    """user0 and user1 on Newsletter and Offers; Staff news has others only."""
    newsletter = make_audience(2, name="Newsletter")
    offers = ContactList.objects.create(name="Offers")
    for contact in Contact.objects.all():
        Subscription.objects.create(contact=contact, contact_list=offers)
    staff = ContactList.objects.create(name="Staff news")
    other = Contact.objects.create(email="staff@example.org")
    Subscription.objects.create(contact=other, contact_list=staff)
    return {"newsletter": newsletter, "offers": offers, "staff": staff}


def link(email: str) -> str:
    return urlparse(preferences_url(contact_id=Contact.objects.get(email=email).pk)).path


def lists_of(email: str) -> set[str]:
    """The lists the contact is subscribed to now."""
    return set(
        Subscription.objects.filter(contact__email=email, unsubscribed_at=None).values_list(
            "contact_list__name", flat=True
        )
    )


def send_everything(dispatcher: Dispatcher) -> None:
    while (batch := services.batch_claim(dispatcher_id=dispatcher.pk)) is not None:
        services.batch_send(batch_id=batch.pk)


def test_the_link_shows_the_contacts_own_lists_without_login_or_cookie(
    lists: dict[str, ContactList],
) -> None:
    response = Client().get(link("user0@example.org"))

    page = response.content.decode()
    assert response.status_code == 200
    assert "Manage subscriptions" in page and "user0@example.org" in page
    assert "Newsletter" in page and "Offers" in page
    assert "Staff news" not in page
    assert not response.cookies  # no session, no CSRF cookie: nothing to log in to


def test_leaving_a_list_holds_before_the_next_send(lists: dict[str, ContactList]) -> None:
    with SmtpSink() as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        only_offers = make_campaign(
            dispatcher=dispatcher, lists=[lists["offers"]], status=Campaign.Status.SCHEDULED
        )
        both = make_campaign(
            dispatcher=dispatcher,
            lists=[lists["newsletter"], lists["offers"]],
            status=Campaign.Status.SCHEDULED,
        )
        services.items_generate()
        assert CampaignItem.objects.filter(status=S.PENDING).count() == 4

        response = Client().post(
            link("user0@example.org"), {"list": [str(lists["newsletter"].pk)], "save": ""}
        )
        assert "You left: Offers." in response.content.decode()
        send_everything(dispatcher)

    assert lists_of("user0@example.org") == {"Newsletter"}
    item = CampaignItem.objects.get(campaign=only_offers, contact__email="user0@example.org")
    assert (item.status, item.skip_reason) == (S.SKIPPED, "unsubscribed")
    # Still on Newsletter, so the campaign to both lists reaches them.
    assert CampaignItem.objects.get(campaign=both, contact__email="user0@example.org").status == (
        S.SENT
    )
    # user0 got the campaign to both lists only; user1 both campaigns.
    assert sink.per_recipient() == {"user0@example.org": 1, "user1@example.org": 2}
    assert Contact.objects.get(email="user0@example.org").status == Contact.Status.ACTIVE


def test_unsubscribe_from_all_skips_every_waiting_item(lists: dict[str, ContactList]) -> None:
    with SmtpSink() as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        make_campaign(
            dispatcher=dispatcher, lists=[lists["newsletter"]], status=Campaign.Status.SCHEDULED
        )
        services.items_generate()
        response = Client().post(link("user1@example.org"), {"unsubscribe_all": ""})
        send_everything(dispatcher)

    assert "You are unsubscribed from all mail" in response.content.decode()
    assert Contact.objects.get(email="user1@example.org").status == Contact.Status.UNSUBSCRIBED
    assert [r.recipients for r in sink.received] == [["user0@example.org"]]
    assert CampaignItem.objects.get(contact__email="user1@example.org").status == S.SKIPPED
    page = Client().get(link("user1@example.org")).content.decode()
    assert "receives no campaigns from us" in page


def test_forged_and_altered_links_are_refused_and_change_nothing(
    lists: dict[str, ContactList],
) -> None:
    genuine = link("user0@example.org")
    signed = genuine.rstrip("/").rsplit("/", 1)[1]
    contact_id, _, signature = signed.partition(":")
    other = Contact.objects.get(email="user1@example.org").pk
    forged = [
        genuine.replace(signed, f"{other}:{signature}"),  # someone else's id, my signature
        # An altered signature (its last character changed, whatever it was).
        genuine.replace(
            signed, f"{contact_id}:{signature[:-1]}{'B' if signature[-1] == 'A' else 'A'}"
        ),
        genuine.replace(signed, contact_id),  # no signature
        genuine.replace(signed, "x"),
    ]
    for url in forged:
        assert Client().get(url).status_code == 404
        response = Client().post(url, {"unsubscribe_all": ""})
        assert response.status_code == 404
        assert "This link is not valid" in response.content.decode()
    assert Contact.objects.filter(status=Contact.Status.ACTIVE).count() == 3
    assert (
        lists_of("user0@example.org")
        == lists_of("user1@example.org")
        == {
            "Newsletter",
            "Offers",
        }
    )


def test_a_contact_cannot_join_a_list_by_posting_its_id(lists: dict[str, ContactList]) -> None:
    Client().post(link("user0@example.org"), {"list": [str(lists["staff"].pk), "x"]})
    assert lists_of("user0@example.org") == set()  # left both; joined nothing


def test_the_send_time_hook_names_a_claimed_contact_who_left(
    lists: dict[str, ContactList],
) -> None:
    dispatcher = make_dispatcher()
    campaign = make_campaign(
        dispatcher=dispatcher, lists=[lists["offers"]], status=Campaign.Status.SCHEDULED
    )
    services.items_generate()
    assert services.batch_claim(dispatcher_id=dispatcher.pk) is not None
    Client().post(link("user0@example.org"), {"list": [str(lists["newsletter"].pk)]})

    # The claimed item is the batch's to settle: untouched here...
    assert set(CampaignItem.objects.values_list("status", flat=True)) == {S.CLAIMED}
    # ...and the hook tells the batch to skip it.
    ids = list(Contact.objects.filter(items__campaign=campaign).values_list("pk", flat=True))
    assert contacts_unsubscribed_from(campaign_id=campaign.pk, contact_ids=ids) == {
        Contact.objects.get(email="user0@example.org").pk
    }


def test_leaving_keeps_the_record_and_the_contact_can_come_back(
    lists: dict[str, ContactList],
) -> None:
    url = link("user0@example.org")
    Client().post(url, {"list": [str(lists["newsletter"].pk)], "save": ""})

    left = Subscription.objects.get(contact__email="user0@example.org", contact_list__name="Offers")
    assert left.unsubscribed_at is not None
    assert left.unsubscribed_via == Subscription.Via.PREFERENCES
    page = Client().get(url).content.decode()
    assert "Offers</label> <small>(you left this list)</small>" in page

    # Ticking it again is the contact's own new consent: recorded as such.
    both = [str(lists["newsletter"].pk), str(lists["offers"].pk)]
    response = Client().post(url, {"list": both, "save": ""})

    assert "You are back on: Offers." in response.content.decode()
    assert lists_of("user0@example.org") == {"Newsletter", "Offers"}
    back = Subscription.objects.get(pk=left.pk)
    assert (back.unsubscribed_at, back.unsubscribed_via) == (None, "")
    assert back.source == "manage subscriptions page" and back.created_at > left.created_at


def test_a_claimed_item_of_a_contact_who_left_is_skipped_at_send_time(
    lists: dict[str, ContactList],
) -> None:
    with SmtpSink() as sink:
        dispatcher = make_dispatcher(smtp_server=make_smtp_server(port=sink.port))
        make_campaign(
            dispatcher=dispatcher, lists=[lists["offers"]], status=Campaign.Status.SCHEDULED
        )
        services.items_generate()
        batch = services.batch_claim(dispatcher_id=dispatcher.pk)
        assert batch is not None
        Client().post(link("user0@example.org"), {"list": [str(lists["newsletter"].pk)]})
        services.batch_send(batch_id=batch.pk)

    assert sink.per_recipient() == {"user1@example.org": 1}
    item = CampaignItem.objects.get(contact__email="user0@example.org")
    assert (item.status, item.skip_reason) == (S.SKIPPED, "unsubscribed")
