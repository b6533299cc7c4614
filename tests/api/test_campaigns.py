"""Campaigns through the API: a draft is edited, scheduled, paused,
resumed, copied; progress and per-recipient results are read."""

from __future__ import annotations

from typing import Any

from campaigns.models import Campaign, CampaignItem, Contact, Template

from .conftest import Cast


def test_a_draft_is_scheduled_and_only_once(marketer: Any, cast: Cast) -> None:
    url = f"/api/v1/campaigns/{cast.draft.pk}/schedule/"
    first = marketer.post(url, {"scheduled_at": "2030-01-01T09:00:00Z"}, format="json")
    assert first.status_code == 200
    assert first.json()["status"] == "scheduled"
    assert first.json()["scheduled_at"].startswith("2030-01-01T09:00:00")
    again = marketer.post(url, {}, format="json")
    assert again.status_code == 409


def test_a_draft_without_lists_is_not_scheduled(marketer: Any, cast: Cast) -> None:
    cast.draft.lists.clear()
    response = marketer.post(f"/api/v1/campaigns/{cast.draft.pk}/schedule/", {}, format="json")
    assert response.status_code == 400
    assert "at least one list" in str(response.json()["details"])


def test_pause_and_resume_move_a_live_campaign(operator: Any, cast: Cast) -> None:
    base = f"/api/v1/campaigns/{cast.live.pk}/"
    paused = operator.post(base + "pause/", {"reason": "checking"}, format="json").json()
    assert (paused["status"], paused["paused_reason"]) == ("paused", "checking")
    assert operator.post(base + "pause/", {}, format="json").status_code == 409
    assert operator.post(base + "resume/").json()["status"] == "generating"
    assert operator.post(base + "resume/").status_code == 409


def test_duplicate_makes_a_draft_copy(marketer: Any, cast: Cast) -> None:
    response = marketer.post(f"/api/v1/campaigns/{cast.live.pk}/duplicate/")
    copy = Campaign.objects.get(pk=response.json()["id"])
    assert copy.status == Campaign.Status.DRAFT
    assert copy.name == f"{cast.live.name} (copy)"
    assert list(copy.lists.all()) == list(cast.live.lists.all())
    assert not copy.items.exists()


def test_an_autoresponder_needs_a_delay(marketer: Any, cast: Cast) -> None:
    body = {
        "name": "Welcome",
        "kind": "autoresponder",
        "template": cast.template.pk,
        "dispatcher": cast.dispatcher.pk,
        "lists": [cast.contact_list.pk],
    }
    response = marketer.post("/api/v1/campaigns/", body, format="json")
    assert response.status_code == 400
    assert "autoresponder_delay" in response.json()["details"]


def test_a_date_autoresponder_is_created_with_its_attribute(marketer: Any, cast: Cast) -> None:
    body = {
        "name": "Renewal reminder",
        "kind": "autoresponder",
        "trigger": "date_attribute",
        "template": cast.template.pk,
        "dispatcher": cast.dispatcher.pk,
        "lists": [cast.contact_list.pk],
    }
    refused = marketer.post("/api/v1/campaigns/", body, format="json")
    assert refused.status_code == 400
    assert "date_attribute" in refused.json()["details"]
    body.update(date_attribute="renewal_date", date_offset_days=-7)
    created = marketer.post("/api/v1/campaigns/", body, format="json")
    assert created.status_code == 201, created.json()
    campaign = Campaign.objects.get(pk=created.json()["id"])
    assert (campaign.date_attribute, campaign.date_offset_days) == ("renewal_date", -7)
    copy = marketer.post(f"/api/v1/campaigns/{campaign.pk}/duplicate/").json()
    assert (copy["trigger"], copy["date_attribute"]) == ("date_attribute", "renewal_date")


def test_progress_and_recipients(marketer: Any, cast: Cast) -> None:
    contacts = Contact.objects.bulk_create(Contact(email=f"r{i}@example.org") for i in range(5))
    CampaignItem.objects.bulk_create(
        CampaignItem(campaign=cast.live, contact=c, status=CampaignItem.Status.SENT)
        for c in contacts
    )
    progress = marketer.get(f"/api/v1/campaigns/{cast.live.pk}/progress/").json()
    assert (progress["total"], progress["sent"], progress["in_flight"]) == (6, 5, 1)
    assert progress["by_status"] == {"sent": 5, "pending": 1}

    first = marketer.get(f"/api/v1/campaigns/{cast.live.pk}/recipients/?page_size=4").json()
    second = marketer.get(first["next"]).json()
    emails = [r["email"] for r in first["results"] + second["results"]]
    assert sorted(emails) == sorted(["jane@example.org", *(c.email for c in contacts)])
    assert second["next"] is None


def test_a_template_previews_for_a_contact_as_it_would_be_sent(marketer: Any, cast: Cast) -> None:
    url = f"/api/v1/templates/{cast.template.pk}/preview/"
    preview = marketer.post(url, {"contact": cast.contact.pk}, format="json").json()
    assert preview["subject"] == "Hello Jane"
    assert "Dear Jane" in preview["text"] and "<p>Dear Jane,</p>" in preview["html"]


def test_the_preview_shows_the_sms_and_what_it_costs_in_segments(marketer: Any, cast: Cast) -> None:
    Template.objects.filter(pk=cast.template.pk).update(
        sms_body="{{ contact.first_name }}, your code is ready: {{ campaign.name }} [1/2]"
    )
    url = f"/api/v1/templates/{cast.template.pk}/preview/"

    preview = marketer.post(url, {"contact": cast.contact.pk}, format="json").json()

    assert preview["sms"]["text"].startswith("Jane, your code is ready: ")
    assert (preview["sms"]["encoding"], preview["sms"]["segments"]) == ("GSM-7", 1)


def test_a_template_without_sms_body_previews_no_sms(marketer: Any, cast: Cast) -> None:
    url = f"/api/v1/templates/{cast.template.pk}/preview/"
    assert marketer.post(url, {"contact": cast.contact.pk}, format="json").json()["sms"] is None


def test_a_preview_that_would_inject_a_header_is_refused(marketer: Any, cast: Cast) -> None:
    Contact.objects.filter(pk=cast.contact.pk).update(first_name="Jane\r\nBcc: all@x.org")
    url = f"/api/v1/templates/{cast.template.pk}/preview/"
    response = marketer.post(url, {"contact": cast.contact.pk}, format="json")
    assert response.status_code == 400
    assert "template" in response.json()["details"]


def test_a_pooled_campaign_must_use_a_member_of_its_pool(marketer: Any, cast: Cast) -> None:
    from dispatchers.models import DispatcherPool, PoolMember

    pool = DispatcherPool.objects.create(name="Pool")
    body = {
        "name": "Pooled",
        "template": cast.template.pk,
        "dispatcher": cast.dispatcher.pk,
        "pool": pool.pk,
        "lists": [cast.contact_list.pk],
    }
    refused = marketer.post("/api/v1/campaigns/", body, format="json")
    assert refused.status_code == 400
    assert "Choose one of the members of the pool" in str(refused.json()["details"])
    PoolMember.objects.create(pool=pool, dispatcher=cast.dispatcher)
    created = marketer.post("/api/v1/campaigns/", body, format="json")
    assert created.status_code == 201
    assert created.json()["pool"] == pool.pk


def test_segments_by_api_and_a_campaign_sent_to_one(marketer: Any, cast: Cast) -> None:
    Contact.objects.bulk_create(
        Contact(email=f"g{i}@example.org", attributes={"plan": "gold" if i % 2 else "free"})
        for i in range(6)
    )
    bad = {"name": "Gold", "conditions": [{"attribute": "plan", "op": "resembles", "value": 1}]}
    refused = marketer.post("/api/v1/segments/", bad, format="json")
    assert refused.status_code == 400 and "conditions" in refused.json()["details"]

    good = {**bad, "conditions": [{"attribute": "plan", "op": "equals", "value": "gold"}]}
    created = marketer.post("/api/v1/segments/", good, format="json")
    assert created.status_code == 201, created.json()
    segment = created.json()["id"]
    assert marketer.get(f"/api/v1/segments/{segment}/count/").json() == {"count": 3}

    body = {
        "name": "To the gold ones",
        "template": cast.template.pk,
        "dispatcher": cast.dispatcher.pk,
        "segments": [segment],
    }
    campaign = marketer.post("/api/v1/campaigns/", body, format="json")
    assert campaign.status_code == 201, campaign.json()
    assert campaign.json()["segments"] == [segment] and campaign.json()["lists"] == []
    nobody = marketer.post("/api/v1/campaigns/", {**body, "segments": []}, format="json")
    assert nobody.status_code == 400
    assert "Choose at least one list or segment" in str(nobody.json()["details"])


def test_cancel_and_unschedule_by_api(marketer: Any, cast: Cast) -> None:
    response = marketer.post(f"/api/v1/campaigns/{cast.live.pk}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    again = marketer.post(f"/api/v1/campaigns/{cast.live.pk}/cancel/")
    assert again.status_code == 409
    assert again.json()["code"] and "cancel" in again.json()["message"].lower()
    draft = marketer.post(f"/api/v1/campaigns/{cast.live.pk}/unschedule/")
    assert draft.status_code == 409
