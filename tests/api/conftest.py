"""A named cast for the API tests: one user (and token) per role, a user
with no role, and one row of everything the API serves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.roles import ADMINISTRATOR, MARKETER, OPERATOR
from accounts.services import user_create
from api.services import token_create
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
from tests.helpers import make_campaign, make_dispatcher, make_template

NO_ROLE = "no role"


@pytest.fixture(autouse=True)
def fast_passwords_and_fresh_throttle(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()  # request counts of the rate limit


@dataclass
class Cast:
    dispatcher: Dispatcher
    template: Template
    contact_list: ContactList
    contact: Contact
    suppression: Suppression
    draft: Campaign
    live: Campaign
    paused: Campaign
    item: CampaignItem
    job_run: JobRun


@pytest.fixture
def cast(db: None) -> Cast:
    dispatcher = make_dispatcher()
    contact_list = ContactList.objects.create(name="Newsletter")
    contact = Contact.objects.create(email="jane@example.org", first_name="Jane")
    Subscription.objects.create(contact=contact, contact_list=contact_list)
    live = make_campaign(
        dispatcher=dispatcher, lists=[contact_list], status=Campaign.Status.SENDING
    )
    Campaign.objects.filter(pk=live.pk).update(started_at=timezone.now())
    return Cast(
        dispatcher=dispatcher,
        template=make_template(),
        contact_list=contact_list,
        contact=contact,
        suppression=Suppression.objects.create(pattern="*@spam.test"),
        draft=make_campaign(dispatcher=dispatcher, lists=[contact_list]),
        live=live,
        paused=make_campaign(
            dispatcher=dispatcher, lists=[contact_list], status=Campaign.Status.PAUSED
        ),
        item=CampaignItem.objects.create(campaign=live, contact=contact),
        job_run=JobRun.objects.create(job=Job.GENERATE_ITEMS, started_at=timezone.now()),
    )


def _user(role: str) -> User:
    name = role.lower().replace(" ", "_")
    if role == NO_ROLE:
        return User.objects.create_user(username=name, password="pw", is_staff=True)
    return user_create(username=name, email=f"{name}@herald.test", password="pw", role=role)


def client_for(user: User) -> APIClient:
    _, raw = token_create(user=user, name="tests")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture
def api_as(db: None) -> Any:
    """api_as(role) -> an API client holding a token of a user in that role."""
    return lambda role: client_for(_user(role))


@pytest.fixture
def marketer(api_as: Any) -> APIClient:
    return api_as(MARKETER)


@pytest.fixture
def operator(api_as: Any) -> APIClient:
    return api_as(OPERATOR)


@pytest.fixture
def administrator(api_as: Any) -> APIClient:
    return api_as(ADMINISTRATOR)
