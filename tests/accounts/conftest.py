"""A named cast for the role tests: one user per role and one row of every
model the admin shows, so each page has something to open."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.db import models
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from accounts.roles import ROLES
from accounts.services import user_create
from campaigns.models import (
    Campaign,
    CampaignItem,
    Contact,
    ContactList,
    Subscription,
    Suppression,
    Template,
)
from dispatchers.models import Dispatcher
from jobs.models import Job, JobRun
from smtpservers.models import SmtpServer

ANONYMOUS = "anonymous"


@dataclass
class Cast:
    smtp_server: SmtpServer
    dispatcher: Dispatcher
    template: Template
    contact_list: ContactList
    contact: Contact
    suppression: Suppression
    campaign: Campaign
    item: CampaignItem
    job_run: JobRun
    periodic_task: PeriodicTask
    user: User
    group: Group

    def by_label(self, label: str) -> models.Model:
        return {
            "campaigns.contact": self.contact,
            "campaigns.contactlist": self.contact_list,
            "campaigns.suppression": self.suppression,
            "campaigns.template": self.template,
            "campaigns.campaign": self.campaign,
            "campaigns.campaignitem": self.item,
            "dispatchers.dispatcher": self.dispatcher,
            "smtpservers.smtpserver": self.smtp_server,
            "auth.user": self.user,
            "auth.group": self.group,
            "django_celery_beat.periodictask": self.periodic_task,
            "jobs.jobrun": self.job_run,
        }[label]


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def cast(db: None) -> Cast:
    smtp_server = SmtpServer.objects.create(name="Relay", host="smtp.example.org", port=587)
    dispatcher = Dispatcher.objects.create(
        name="Newsletter sender",
        server_name="mailer1",
        type=Dispatcher.Type.EMAIL,
        delivery_mode=Dispatcher.DeliveryMode.PICKUP,
        pickup_directory="/tmp/x",
        from_email="news@example.org",
    )
    template = Template.objects.create(
        name="Welcome", subject="Hello {{ contact.first_name }}", text_body="Hi!"
    )
    contact_list = ContactList.objects.create(name="Customers")
    contact = Contact.objects.create(email="jane@example.org", first_name="Jane")
    Subscription.objects.create(contact=contact, contact_list=contact_list)
    campaign = Campaign.objects.create(name="Spring sale", template=template, dispatcher=dispatcher)
    campaign.lists.add(contact_list)
    every_minute = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    return Cast(
        smtp_server=smtp_server,
        dispatcher=dispatcher,
        template=template,
        contact_list=contact_list,
        contact=contact,
        suppression=Suppression.objects.create(pattern="*@blocked.example"),
        campaign=campaign,
        item=CampaignItem.objects.create(campaign=campaign, contact=contact),
        job_run=JobRun.objects.create(
            job=Job.GENERATE_ITEMS,
            started_at=timezone.now(),
            finished_at=timezone.now(),
            outcome=JobRun.Outcome.OK,
        ),
        periodic_task=PeriodicTask.objects.create(
            name="Role test task", task="campaigns.tasks.generate_items", interval=every_minute
        ),
        user=User.objects.create_user(username="bystander", email="bystander@example.org"),
        group=Group.objects.get(name="Marketer"),
    )


@pytest.fixture
def login(db: None, client: Client) -> Callable[[str], Client]:
    """login(role) -> the test client, logged in as a new user in that role."""

    def as_role(role: str) -> Client:
        if role == ANONYMOUS:
            return client
        assert role in ROLES
        user = user_create(
            username=role.lower(),
            email=f"{role.lower()}@example.org",
            password="x-Pass-4567",
            role=role,
        )
        client.force_login(user)
        return client

    return as_role
