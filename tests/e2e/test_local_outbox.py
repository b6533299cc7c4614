"""What `make run` promises: a campaign scheduled through the UI to the
Local outbox dispatcher lands as .eml files, with no mail server."""

from __future__ import annotations

import email
import email.policy

import pytest
from django.urls import reverse

from accounts.roles import MARKETER
from accounts.services import user_create
from campaigns import services
from campaigns.models import Batch, Campaign
from dispatchers.services import dispatcher_ensure_local_outbox
from tests.helpers import make_audience, make_template

pytestmark = pytest.mark.django_db


def test_a_campaign_scheduled_in_the_browser_lands_in_the_outbox(client, tmp_path):
    outbox = dispatcher_ensure_local_outbox(directory=str(tmp_path / "outbox"))
    audience = make_audience(3)
    template = make_template()
    client.force_login(
        user_create(username="mia", email="mia@herald.test", password="x", role=MARKETER)
    )

    response = client.post(
        reverse("admin:campaigns_campaign_add"),
        {
            "name": "November news",
            "template": template.pk,
            "lists": [audience.pk],
            "dispatcher": outbox.pk,
            "kind": "regular",
            "trigger": "list_joined",  # prefilled by the form, as a browser posts it
            "date_offset_days": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    campaign = Campaign.objects.get(name="November news")
    response = client.post(
        reverse("admin:campaigns_campaign_changelist"),
        {"action": "schedule_now", "_selected_action": [campaign.pk]},
        follow=True,
    )
    assert "November news: scheduled." in response.content.decode()

    services.items_generate()
    services.messages_process()
    for batch_id in Batch.objects.filter(finished_at__isnull=True).values_list("pk", flat=True):
        services.batch_send(batch_id=batch_id)
    services.campaigns_complete()

    files = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 3
    recipients = {
        email.message_from_bytes(f.read_bytes(), policy=email.policy.default)["To"]
        .addresses[0]
        .addr_spec
        for f in files
    }
    assert recipients == {"user0@example.org", "user1@example.org", "user2@example.org"}
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.COMPLETED
    assert campaign.created_by.username == "mia"
