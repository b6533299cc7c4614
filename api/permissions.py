"""The admin's permissions, applied to the API.

Each viewset names its model; an action needs the permission the admin
would ask for the same thing: view (or change, as the admin lets a user
who may change also look), add, change, delete, and the custom ones
(pause_campaign, pause_dispatcher, run_job) named by the action."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

VERBS = {
    "list": "view",
    "retrieve": "view",
    "create": "add",
    "update": "change",
    "partial_update": "change",
    "destroy": "delete",
}


def _perm(model: Any, verb: str) -> str:
    return f"{model._meta.app_label}.{verb}_{model._meta.model_name}"


class AdminPermissions(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        extra = getattr(view, "action_permissions", {})
        if view.action in extra:
            return all(user.has_perm(p) for p in extra[view.action])
        verb = VERBS.get(view.action or "", "view")
        model = view.permission_model
        if verb == "view":
            return user.has_perm(_perm(model, "view")) or user.has_perm(_perm(model, "change"))
        return user.has_perm(_perm(model, verb))
