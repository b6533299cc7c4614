"""Herald's three roles, as Django groups with exact permissions.

The table below is the single source: the data migration creates the
groups from it, and every later migrate re-applies it, so a permission
added by a new model lands in the right roles without a hand edit."""

from __future__ import annotations

from typing import Any

MARKETER = "Marketer"
OPERATOR = "Operator"
ADMINISTRATOR = "Administrator"
ROLES = (MARKETER, OPERATOR, ADMINISTRATOR)

_CRUD = ("add", "change", "delete", "view")

# model label -> codenames prefixes (or full codenames) per role
ROLE_PERMISSIONS: dict[str, dict[str, tuple[str, ...]]] = {
    MARKETER: {
        "campaigns.contact": _CRUD,
        "campaigns.contactlist": _CRUD,
        "campaigns.subscription": _CRUD,
        "campaigns.suppression": _CRUD,
        "campaigns.template": _CRUD,
        "campaigns.segment": _CRUD,
        "campaigns.campaign": (*_CRUD, "pause_campaign"),
        "campaigns.campaignitem": ("view",),
        "campaigns.marketingconfiguration": ("change", "view"),
        "bounces.bounce": ("view",),
        "api.apitoken": ("add", "view", "delete"),
    },
    OPERATOR: {
        "campaigns.campaign": ("view", "pause_campaign"),
        "campaigns.campaignitem": ("view",),
        "campaigns.batch": ("view",),
        "dispatchers.dispatcher": ("view", "pause_dispatcher"),
        "dispatchers.dispatcherpool": ("view",),
        "dispatchers.poolmember": ("view",),
        "dispatchers.senderdomain": ("view",),
        "jobs.jobrun": ("view", "run_job"),
        "jobs.notification": ("view", "change"),
        "bounces.bounce": ("view",),
        "api.apitoken": ("add", "view", "delete"),
    },
}


def _codename(action: str, model: str) -> str:
    return f"{action}_{model}" if action in _CRUD else action


def roles_sync(apps: Any) -> None:
    """Create the groups and set their permissions exactly to the table."""
    _permissions_create(apps)
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for role in ROLES:
        group, _ = group_model.objects.get_or_create(name=role)
        if role == ADMINISTRATOR:
            group.permissions.set(permission_model.objects.all())
            continue
        wanted = []
        for label, actions in ROLE_PERMISSIONS[role].items():
            app_label, model = label.split(".")
            codenames = [_codename(a, model) for a in actions]
            wanted += list(
                permission_model.objects.filter(
                    content_type__app_label=app_label, codename__in=codenames
                )
            )
        group.permissions.set(wanted)


def _permissions_create(apps: Any) -> None:
    # Django creates permissions after migrations, app by app; make sure
    # every app's exist now, so the roles see all of them.
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        had_models = getattr(app_config, "models_module", None)
        app_config.models_module = had_models or True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = had_models


def roles_sync_after_migrate(sender: Any, apps: Any = None, **kwargs: Any) -> None:
    if apps is None or sender.name != "accounts":
        return
    roles_sync(apps)
