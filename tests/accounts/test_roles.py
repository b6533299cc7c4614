"""What each role may open and do, page by page and action by action.

The tables are the specification: a refusal is HTTP 403 for a logged-in
user (never a 500, a redirect to the login page or a quiet success), and
a refused write leaves the row as it was."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, Permission, User
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse

from accounts.roles import ADMINISTRATOR, MARKETER, OPERATOR, roles_sync
from campaigns.models import Campaign
from dispatchers.models import Dispatcher

from .conftest import ANONYMOUS, Cast

pytestmark = pytest.mark.django_db

Login = Callable[[str], Client]

# What a GET of an admin page gives.
EDIT = "edit"  # 200, a form with a Save button
VIEW = "view"  # 200, read-only: no Save button
OK = "ok"  # 200 (a changelist)
NO = "403"  # PermissionDenied

ROLE_ORDER = (MARKETER, OPERATOR, ADMINISTRATOR)

# model label: (changelist, add, change) for each role
ADMIN_PAGES: dict[str, tuple[tuple[str, str, str], ...]] = {
    #                                   Marketer            Operator            Administrator
    "campaigns.contact":               ((OK, EDIT, EDIT),   (NO, NO, NO),       (OK, EDIT, EDIT)),
    "campaigns.contactlist":           ((OK, EDIT, EDIT),   (NO, NO, NO),       (OK, EDIT, EDIT)),
    "campaigns.suppression":           ((OK, EDIT, EDIT),   (NO, NO, NO),       (OK, EDIT, EDIT)),
    "campaigns.template":              ((OK, EDIT, EDIT),   (NO, NO, NO),       (OK, EDIT, EDIT)),
    "campaigns.campaign":              ((OK, EDIT, EDIT),   (OK, NO, VIEW),     (OK, EDIT, EDIT)),
    "campaigns.campaignitem":          ((OK, NO, VIEW),     (OK, NO, VIEW),     (OK, NO, VIEW)),
    "dispatchers.dispatcher":          ((NO, NO, NO),       (OK, NO, VIEW),     (OK, EDIT, EDIT)),
    "smtpservers.smtpserver":          ((NO, NO, NO),       (NO, NO, NO),       (OK, EDIT, EDIT)),
    "auth.user":                       ((NO, NO, NO),       (NO, NO, NO),       (OK, EDIT, EDIT)),
    "auth.group":                      ((NO, NO, NO),       (NO, NO, NO),       (OK, EDIT, EDIT)),
    "django_celery_beat.periodictask": ((NO, NO, NO),       (NO, NO, NO),       (OK, EDIT, EDIT)),
    "jobs.jobrun":                     ((NO, NO, NO),       (OK, NO, VIEW),     (OK, NO, VIEW)),
}  # fmt: skip

PAGE_KINDS = ("changelist", "add", "change")


def admin_page_cases() -> list[Any]:
    return [
        pytest.param(role, label, kind, expected, id=f"{role}-{label}-{kind}")
        for label, per_role in ADMIN_PAGES.items()
        for role, pages in zip(ROLE_ORDER, per_role, strict=True)
        for kind, expected in zip(PAGE_KINDS, pages, strict=True)
    ]


def admin_url(cast: Cast, label: str, kind: str) -> str:
    app_label, model = label.split(".")
    name = f"admin:{app_label}_{model}_{kind}"
    return reverse(name, args=[cast.by_label(label).pk] if kind == "change" else [])


def assert_page(response: HttpResponse, expected: str) -> None:
    if expected == NO:
        assert response.status_code == 403
        return
    assert response.status_code == 200
    html = response.content.decode()
    if expected == EDIT:
        assert 'name="_save"' in html
    elif expected == VIEW:
        assert 'name="_save"' not in html


@pytest.mark.parametrize(("role", "label", "kind", "expected"), admin_page_cases())
def test_admin_pages(
    role: str, label: str, kind: str, expected: str, cast: Cast, login: Login
) -> None:
    client = login(role)
    assert_page(client.get(admin_url(cast, label, kind)), expected)


@pytest.mark.parametrize("kind", PAGE_KINDS)
@pytest.mark.parametrize("label", ADMIN_PAGES)
def test_anonymous_users_are_sent_to_log_in(
    label: str, kind: str, cast: Cast, login: Login
) -> None:
    url = admin_url(cast, label, kind)
    response = login(ANONYMOUS).get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


# --- the admin index: each role sees only what it may open ---------------------

INDEX_LINKS = {
    #                                  Marketer Operator Administrator
    "campaigns.campaign":               (True,  True,  True),
    "campaigns.contact":                (True,  False, True),
    "dispatchers.dispatcher":           (False, True,  True),
    "smtpservers.smtpserver":           (False, False, True),
    "auth.user":                        (False, False, True),
    "django_celery_beat.periodictask":  (False, False, True),
    "jobs.jobrun":                      (False, True,  True),
}  # fmt: skip


@pytest.mark.parametrize(
    ("role", "label", "shown"),
    [
        pytest.param(role, label, shown, id=f"{role}-{label}")
        for label, row in INDEX_LINKS.items()
        for role, shown in zip(ROLE_ORDER, row, strict=True)
    ],
)
def test_admin_index_links(role: str, label: str, shown: bool, cast: Cast, login: Login) -> None:
    response = login(role).get(reverse("admin:index"))
    assert response.status_code == 200
    assert (f'href="{admin_url(cast, label, "changelist")}"' in response.content.decode()) is shown


# --- the job manager -------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"),
    [(MARKETER, 403), (OPERATOR, 200), (ADMINISTRATOR, 200)],
)
def test_job_manager_page(role: str, status: int, cast: Cast, login: Login) -> None:
    response = login(role).get(reverse("jobs:manager"))
    assert response.status_code == status
    if status == 200:
        assert "Generate campaign items" in response.content.decode()


def test_job_manager_sends_anonymous_users_to_log_in(login: Login) -> None:
    response = login(ANONYMOUS).get(reverse("jobs:manager"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize("role", [ANONYMOUS, *ROLE_ORDER])
def test_the_unsubscribe_page_is_public(role: str, login: Login) -> None:
    # Signed, not logged in: a bad signature is a 404 page for anyone, never a login form.
    response = login(role).get(reverse("campaigns:unsubscribe", args=["not-a-signature"]))
    assert response.status_code == 404


# --- admin actions -----------------------------------------------------------------

DONE = "done"  # 302 back to the changelist, the row moved, a success message
REFUSED = "refused"  # the action is not offered: 302 with "No action selected.", row unchanged
FORBIDDEN = "forbidden"  # 403: the role cannot open the changelist at all, row unchanged

S = Campaign.Status

CAMPAIGN_ACTIONS = [
    # role           action          from         to (when done)  outcome
    (MARKETER,       "pause",        S.SENDING,   S.PAUSED,       DONE),
    (OPERATOR,       "pause",        S.SENDING,   S.PAUSED,       DONE),
    (ADMINISTRATOR,  "pause",        S.SENDING,   S.PAUSED,       DONE),
    (MARKETER,       "resume",       S.PAUSED,    S.SENDING,      DONE),
    (OPERATOR,       "resume",       S.PAUSED,    S.SENDING,      DONE),
    (ADMINISTRATOR,  "resume",       S.PAUSED,    S.SENDING,      DONE),
    (MARKETER,       "schedule_now", S.DRAFT,     S.SCHEDULED,    DONE),
    (OPERATOR,       "schedule_now", S.DRAFT,     S.DRAFT,        REFUSED),
    (ADMINISTRATOR,  "schedule_now", S.DRAFT,     S.SCHEDULED,    DONE),
]  # fmt: skip

DISPATCHER_ACTIONS = [
    # role           action    enabled before  enabled after  outcome
    (MARKETER,       "pause",  True,           True,          FORBIDDEN),
    (OPERATOR,       "pause",  True,           False,         DONE),
    (ADMINISTRATOR,  "pause",  True,           False,         DONE),
    (MARKETER,       "resume", False,          False,         FORBIDDEN),
    (OPERATOR,       "resume", False,          True,          DONE),
    (ADMINISTRATOR,  "resume", False,          True,          DONE),
]  # fmt: skip


def post_action(client: Client, changelist: str, action: str, pk: int) -> HttpResponse:
    # What the changelist's action bar sends.
    return client.post(changelist, {"action": action, "_selected_action": [pk], "index": "0"})


def assert_outcome(response: HttpResponse, changelist: str, outcome: str, done_text: str) -> None:
    if outcome == FORBIDDEN:
        assert response.status_code == 403
        return
    assert response.status_code == 302
    assert response["Location"] == changelist
    sent = [str(m) for m in get_messages(response.wsgi_request)]
    if outcome == DONE:
        assert any(done_text in m for m in sent), sent
    else:
        assert sent == ["No action selected."]


@pytest.mark.parametrize(
    ("role", "action", "before", "after", "outcome"),
    [pytest.param(*row, id=f"{row[0]}-{row[1]}") for row in CAMPAIGN_ACTIONS],
)
def test_campaign_actions(
    role: str, action: str, before: str, after: str, outcome: str, cast: Cast, login: Login
) -> None:
    campaign = cast.campaign
    started = None if before == S.DRAFT else campaign.created_at
    Campaign.objects.filter(pk=campaign.pk).update(
        status=before, started_at=started, audience_complete=started is not None
    )
    changelist = reverse("admin:campaigns_campaign_changelist")

    response = post_action(login(role), changelist, action, campaign.pk)

    done_text = {"pause": "Paused 1", "resume": "Resumed 1", "schedule_now": "scheduled."}[action]
    assert_outcome(response, changelist, outcome, done_text)
    campaign.refresh_from_db()
    assert campaign.status == after


@pytest.mark.parametrize(
    ("role", "action", "before", "after", "outcome"),
    [pytest.param(*row, id=f"{row[0]}-{row[1]}") for row in DISPATCHER_ACTIONS],
)
def test_dispatcher_actions(
    role: str, action: str, before: bool, after: bool, outcome: str, cast: Cast, login: Login
) -> None:
    dispatcher = cast.dispatcher
    Dispatcher.objects.filter(pk=dispatcher.pk).update(is_enabled=before)
    changelist = reverse("admin:dispatchers_dispatcher_changelist")

    response = post_action(login(role), changelist, action, dispatcher.pk)

    assert_outcome(response, changelist, outcome, f"{action.capitalize()}d 1 dispatcher")
    dispatcher.refresh_from_db()
    assert dispatcher.is_enabled is after


@pytest.mark.parametrize(
    ("role", "offered"),
    [
        (MARKETER, {"delete_selected", "schedule_now", "pause", "resume"}),
        (OPERATOR, {"pause", "resume"}),
        (ADMINISTRATOR, {"delete_selected", "schedule_now", "pause", "resume"}),
    ],
)
def test_campaign_action_bar_offers_only_allowed_actions(
    role: str, offered: set[str], cast: Cast, login: Login
) -> None:
    response = login(role).get(reverse("admin:campaigns_campaign_changelist"))
    choices = {value for value, _ in response.context["action_form"].fields["action"].choices}
    assert choices - {""} == offered


# --- writes through the change and add forms -------------------------------------


def campaign_form(cast: Cast, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "regular",
        "trigger": "list_joined",  # prefilled by the form, as a browser posts it
        "date_offset_days": "0",
        "template": cast.template.pk,
        "lists": [cast.contact_list.pk],
        "dispatcher": cast.dispatcher.pk,
        "scheduled_at_0": "",
        "scheduled_at_1": "",
    }


def dispatcher_form(cast: Cast, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "server_name": "mailer2",
        "type": "EMAIL",
        "is_enabled": "on",
        "messages_per_hour": "3600",
        "batch_size": "100",
        "connections": "1",
        "pacing": "spread",
        "delivery_mode": "pickup",
        "smtp_server": "",
        "pickup_directory": "/tmp/x",
        "from_email": "news@example.org",
        "from_name": "",
        "reply_to": "",
    }


def smtp_server_form(cast: Cast, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "host": "smtp.example.org",
        "port": "587",
        "security": "none",
        "verify_certificate": "on",
        "timeout": "30",
        "helo_name": "",
        "is_active": "on",
        "auth_method": "none",
        "username": "",
        "password": "",
    }


def template_form(cast: Cast, name: str) -> dict[str, Any]:
    return {"name": name, "subject": "Hello", "html_body": "", "text_body": "Hi!"}


FORMS = {
    "campaigns.campaign": campaign_form,
    "dispatchers.dispatcher": dispatcher_form,
    "smtpservers.smtpserver": smtp_server_form,
    "campaigns.template": template_form,
}

CHANGE_POSTS = [
    # role           model                     saved?
    (MARKETER,       "campaigns.campaign",     True),
    (OPERATOR,       "campaigns.campaign",     False),
    (ADMINISTRATOR,  "campaigns.campaign",     True),
    (MARKETER,       "campaigns.template",     True),
    (OPERATOR,       "campaigns.template",     False),
    (MARKETER,       "dispatchers.dispatcher", False),
    (OPERATOR,       "dispatchers.dispatcher", False),
    (ADMINISTRATOR,  "dispatchers.dispatcher", True),
    (MARKETER,       "smtpservers.smtpserver", False),
    (OPERATOR,       "smtpservers.smtpserver", False),
    (ADMINISTRATOR,  "smtpservers.smtpserver", True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("role", "label", "saved"),
    [pytest.param(*row, id=f"{row[0]}-{row[1]}") for row in CHANGE_POSTS],
)
def test_change_form_posts(role: str, label: str, saved: bool, cast: Cast, login: Login) -> None:
    obj = cast.by_label(label)
    old_name = obj.name

    response = login(role).post(
        admin_url(cast, label, "change"), FORMS[label](cast, name="Renamed")
    )

    obj.refresh_from_db()
    if saved:
        assert response.status_code == 302, response.context and response.context.get("errors")
        assert obj.name == "Renamed"
    else:
        assert response.status_code == 403
        assert obj.name == old_name


@pytest.mark.parametrize(
    ("role", "label", "saved"),
    [pytest.param(*row, id=f"{row[0]}-{row[1]}") for row in CHANGE_POSTS],
)
def test_add_form_posts(role: str, label: str, saved: bool, cast: Cast, login: Login) -> None:
    model = apps.get_model(label)
    response = login(role).post(admin_url(cast, label, "add"), FORMS[label](cast, name="Brand new"))

    if saved:
        assert response.status_code == 302, response.context and response.context.get("errors")
    else:
        assert response.status_code == 403
    assert model.objects.filter(name="Brand new").exists() is saved


@pytest.mark.parametrize("role", [MARKETER, OPERATOR])
def test_nobody_but_an_administrator_can_raise_their_own_rights(
    role: str, cast: Cast, login: Login
) -> None:
    client = login(role)
    me = User.objects.get(username=role.lower())
    response = client.post(
        reverse("admin:auth_user_change", args=[me.pk]),
        {"username": me.username, "is_active": "on", "is_staff": "on", "is_superuser": "on"},
    )
    assert response.status_code == 403
    me.refresh_from_db()
    assert not me.is_superuser
    response = client.post(
        reverse("admin:auth_group_change", args=[Group.objects.get(name=role).pk]),
        {"name": role, "permissions": list(Permission.objects.values_list("pk", flat=True))},
    )
    assert response.status_code == 403
    assert not me.has_perm("smtpservers.view_smtpserver")


# --- a marketer picks a dispatcher by name, but cannot open it --------------------


def test_marketer_creates_a_campaign_choosing_a_dispatcher_by_name(
    cast: Cast, login: Login
) -> None:
    client = login(MARKETER)
    add = reverse("admin:campaigns_campaign_add")

    html = client.get(add).content.decode()
    assert f'<option value="{cast.dispatcher.pk}">Newsletter sender</option>' in html
    # No add/change shortcuts to a page the marketer may not open.
    assert 'id="add_id_dispatcher"' not in html
    assert 'id="change_id_dispatcher"' not in html

    response = client.post(add, campaign_form(cast, name="Summer sale"))
    assert response.status_code == 302
    campaign = Campaign.objects.get(name="Summer sale")
    assert campaign.dispatcher == cast.dispatcher
    assert campaign.status == Campaign.Status.DRAFT
    assert campaign.created_by == User.objects.get(username="marketer")

    for kind in PAGE_KINDS:
        assert client.get(admin_url(cast, "dispatchers.dispatcher", kind)).status_code == 403


def test_an_administrator_gets_the_dispatcher_shortcuts(cast: Cast, login: Login) -> None:
    html = login(ADMINISTRATOR).get(reverse("admin:campaigns_campaign_add")).content.decode()
    assert 'id="add_id_dispatcher"' in html


# --- the roles themselves, as the data migration made them ------------------------

CRUD = ("add", "change", "delete", "view")

MARKETER_PERMISSIONS = {
    ("campaigns", f"{action}_{model}")
    for model in ("contact", "contactlist", "subscription", "suppression", "template", "campaign")
    for action in CRUD
} | {
    ("campaigns", "pause_campaign"),
    ("campaigns", "view_campaignitem"),
    ("campaigns", "view_marketingconfiguration"),
    ("campaigns", "change_marketingconfiguration"),
    ("campaigns", "add_segment"),
    ("campaigns", "change_segment"),
    ("campaigns", "delete_segment"),
    ("campaigns", "view_segment"),
    ("bounces", "view_bounce"),
    ("api", "add_apitoken"),
    ("api", "view_apitoken"),
    ("api", "delete_apitoken"),
}

OPERATOR_PERMISSIONS = {
    ("campaigns", "view_campaign"),
    ("campaigns", "pause_campaign"),
    ("campaigns", "view_campaignitem"),
    ("campaigns", "view_batch"),
    ("dispatchers", "view_dispatcher"),
    ("dispatchers", "pause_dispatcher"),
    ("dispatchers", "view_dispatcherpool"),
    ("dispatchers", "view_poolmember"),
    ("dispatchers", "view_senderdomain"),
    ("jobs", "view_jobrun"),
    ("jobs", "run_job"),
    ("jobs", "view_notification"),
    ("jobs", "change_notification"),
    ("bounces", "view_bounce"),
    ("api", "add_apitoken"),
    ("api", "view_apitoken"),
    ("api", "delete_apitoken"),
}


def permissions_of(role: str) -> set[tuple[str, str]]:
    return set(
        Group.objects.get(name=role).permissions.values_list("content_type__app_label", "codename")
    )


def test_the_three_roles_exist() -> None:
    assert set(Group.objects.values_list("name", flat=True)) >= {
        MARKETER,
        OPERATOR,
        ADMINISTRATOR,
    }


def test_marketer_permissions_are_exactly() -> None:
    assert len(MARKETER_PERMISSIONS) == 36
    assert permissions_of(MARKETER) == MARKETER_PERMISSIONS


def test_operator_permissions_are_exactly() -> None:
    assert permissions_of(OPERATOR) == OPERATOR_PERMISSIONS


def test_administrator_has_every_permission() -> None:
    everything = set(Permission.objects.values_list("content_type__app_label", "codename"))
    assert permissions_of(ADMINISTRATOR) == everything


def test_an_administrator_user_is_a_superuser_and_the_others_are_not(login: Login) -> None:
    for role in ROLE_ORDER:
        login(role)
    users = {u.username: u for u in User.objects.all()}
    assert users["administrator"].is_superuser
    assert not users["marketer"].is_superuser
    assert not users["operator"].is_superuser
    assert all(u.is_staff for u in users.values())


def test_syncing_the_roles_restores_the_exact_sets() -> None:
    operator = Group.objects.get(name=OPERATOR)
    operator.permissions.add(Permission.objects.get(codename="change_smtpserver"))
    Group.objects.get(name=MARKETER).permissions.clear()

    roles_sync(apps)

    assert permissions_of(OPERATOR) == OPERATOR_PERMISSIONS
    assert permissions_of(MARKETER) == MARKETER_PERMISSIONS


def test_every_migrate_reapplies_the_role_table() -> None:
    operator = Group.objects.get(name=OPERATOR)
    operator.permissions.add(Permission.objects.get(codename="change_smtpserver"))

    call_command("migrate", verbosity=0)

    assert permissions_of(OPERATOR) == OPERATOR_PERMISSIONS
