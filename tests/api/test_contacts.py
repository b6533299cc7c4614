"""Contacts through the API: filters, cursor pages, list membership and
the bulk upsert of up to 10,000 rows with a result per row."""

from __future__ import annotations

from typing import Any

from campaigns.models import Contact, ContactList, Subscription

from .conftest import Cast

BULK = "/api/v1/contacts/bulk/"


def test_bulk_upsert_of_10000_saves_the_good_rows_and_reports_each_bad_one(
    marketer: Any, cast: Cast
) -> None:
    rows: list[Any] = [
        {"email": f"Person{i}@Example.org", "first_name": f"P{i}", "attributes": {"n": i}}
        for i in range(10_000)
    ]
    rows[0] = {"email": "jane@example.org", "last_name": "Doe"}  # already a contact
    bad = {
        17: ({"email": "not an address"}, "invalid address"),
        230: ({"email": "x@example.org", "first_name": "Eve\r\nBcc: all@x.org"}, "header"),
        4001: ({"email": "y@example.org", "phone": "12"}, "invalid phone"),
        5002: ({"first_name": "No address"}, "missing required field: email"),
        6003: ("just a string", "must be an object"),
        7004: ({"email": 42}, "email must be a string"),
        8005: ({"email": "z@example.org", "time_zone": "Mars/Olympus"}, "invalid time zone"),
        9998: ({"email": "person9997@example.org"}, "duplicate of row 9997"),
    }
    for index, (row, _) in bad.items():
        rows[index] = row

    response = marketer.post(BULK, {"contacts": rows, "list": cast.contact_list.pk}, format="json")

    assert response.status_code == 200, response.content[:500]
    body = response.json()
    results = body["results"]
    assert [r["index"] for r in results] == list(range(10_000))
    rejected = {r["index"]: r["errors"] for r in results if r["status"] == "rejected"}
    assert set(rejected) == set(bad)
    for index, (_, reason) in bad.items():
        assert reason in rejected[index][0], (index, rejected[index])
    assert results[0]["status"] == "updated"
    assert (body["created"], body["updated"], body["rejected"]) == (10_000 - 9, 1, 8)

    assert Contact.objects.count() == 1 + 10_000 - 9
    jane = Contact.objects.get(email="jane@example.org")
    assert (jane.first_name, jane.last_name) == ("Jane", "Doe")
    assert Contact.objects.get(email="person42@example.org").attributes == {"n": 42}
    assert Subscription.objects.filter(contact_list=cast.contact_list).count() == 10_000 - 8


def test_bulk_upsert_refuses_more_than_10000_rows_whole(marketer: Any, db: None) -> None:
    rows = [{"email": f"p{i}@example.org"} for i in range(10_001)]
    response = marketer.post(BULK, {"contacts": rows}, format="json")
    assert response.status_code == 400
    assert "contacts" in response.json()["details"]
    assert not Contact.objects.exists()


def test_contacts_filter_by_status_list_and_email(marketer: Any, cast: Cast) -> None:
    Contact.objects.create(email="gone@example.org", status=Contact.Status.UNSUBSCRIBED)
    other = ContactList.objects.create(name="Other")

    def emails(query: str) -> list[str]:
        response = marketer.get(f"/api/v1/contacts/?{query}")
        assert response.status_code == 200, response.content
        return [c["email"] for c in response.json()["results"]]

    assert emails("status=unsubscribed") == ["gone@example.org"]
    assert emails(f"list={cast.contact_list.pk}") == ["jane@example.org"]
    assert emails(f"list={other.pk}") == []
    assert emails("email=JANE@example.org") == ["jane@example.org"]
    assert marketer.get("/api/v1/contacts/?status=sleeping").status_code == 400
    assert marketer.get("/api/v1/contacts/?list=abc").status_code == 400


def test_contacts_come_in_cursor_pages(marketer: Any, db: None) -> None:
    Contact.objects.bulk_create(Contact(email=f"p{i:03}@example.org") for i in range(250))
    seen: list[str] = []
    url = "/api/v1/contacts/?page_size=100"
    while url:
        body = marketer.get(url).json()
        seen += [c["email"] for c in body["results"]]
        url = body["next"]
    assert len(seen) == 250 == len(set(seen))


def test_a_contact_joins_and_leaves_lists(marketer: Any, cast: Cast) -> None:
    vip = ContactList.objects.create(name="VIP")
    url = f"/api/v1/contacts/{cast.contact.pk}/"
    joined = marketer.post(url + "subscribe/", {"lists": [vip.pk]}, format="json").json()
    assert sorted(joined["lists"]) == sorted([cast.contact_list.pk, vip.pk])
    left = marketer.post(url + "unsubscribe/", {"lists": [cast.contact_list.pk]}, format="json")
    assert left.json()["lists"] == [vip.pk]
    record = {s["list"]: s for s in left.json()["subscriptions"]}[cast.contact_list.pk]
    assert record["unsubscribed_at"] and record["unsubscribed_via"] == "api"
    missing = marketer.post(url + "subscribe/", {"lists": [999999]}, format="json")
    assert missing.status_code == 400
    assert "lists" in missing.json()["details"]


def test_an_address_differing_only_in_case_is_the_same_contact(marketer: Any, cast: Cast) -> None:
    response = marketer.post("/api/v1/contacts/", {"email": "JANE@Example.org"}, format="json")
    assert response.status_code == 400
    assert "email" in response.json()["details"]
    created = marketer.post("/api/v1/contacts/", {"email": "New@Example.org"}, format="json")
    assert created.json()["email"] == "new@example.org"


def test_the_api_does_not_put_back_a_contact_who_unsubscribed_without_new_consent(
    marketer: Any, cast: Cast
) -> None:
    Subscription.objects.filter(contact=cast.contact).update(
        unsubscribed_at="2026-01-05T10:00:00Z", unsubscribed_via=Subscription.Via.PREFERENCES
    )
    url = f"/api/v1/contacts/{cast.contact.pk}/subscribe/"
    vip = ContactList.objects.create(name="VIP")

    refused = marketer.post(url, {"lists": [vip.pk, cast.contact_list.pk]}, format="json")

    assert refused.status_code == 409
    message = refused.json()["message"]
    assert "jane@example.org unsubscribed from Newsletter on 2026-01-05" in message
    assert "(Manage subscriptions page)" in message and '"resubscribe": true' in message
    assert not Subscription.objects.filter(contact_list=vip).exists()  # nothing changed
    listed = marketer.get(f"/api/v1/contacts/?list={cast.contact_list.pk}").json()["results"]
    assert listed == []

    body = {"lists": [cast.contact_list.pk], "resubscribe": True, "source": "phone call 2026-02"}
    back = marketer.post(url, body, format="json")

    assert back.status_code == 200 and back.json()["lists"] == [cast.contact_list.pk]
    record = Subscription.objects.get(contact=cast.contact)
    assert (record.unsubscribed_at, record.source) == (None, "phone call 2026-02")


def test_bulk_upsert_counts_those_it_did_not_put_back_on_the_list(
    marketer: Any, cast: Cast
) -> None:
    Subscription.objects.filter(contact=cast.contact).update(
        unsubscribed_at="2026-01-05T10:00:00Z", unsubscribed_via=Subscription.Via.API
    )
    rows = [{"email": "jane@example.org", "last_name": "Doe"}, {"email": "new@example.org"}]

    body = marketer.post(BULK, {"contacts": rows, "list": cast.contact_list.pk}, format="json")

    assert body.json()["kept_unsubscribed"] == 1
    on_list = Subscription.objects.filter(contact_list=cast.contact_list, unsubscribed_at=None)
    assert list(on_list.values_list("contact__email", flat=True)) == ["new@example.org"]
    assert Contact.objects.get(email="jane@example.org").last_name == "Doe"
