"""First-run set-up: the first administrator."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.db import transaction

from .roles import ADMINISTRATOR


def user_create(*, username: str, email: str, password: str, role: str) -> AbstractUser:
    """A staff user in one role (Administrators are also superusers)."""
    with transaction.atomic():
        user = get_user_model().objects.create_user(
            username=username,
            email=email,
            password=password,
            is_staff=True,
            is_superuser=role == ADMINISTRATOR,
        )
        user.groups.add(Group.objects.get(name=role))
    return user


def administrator_ensure_first(*, username: str = "admin") -> str | None:
    """Create the first administrator when there is none.

    Returns the generated password (shown once), or None when an
    administrator already exists. There is never a fixed default."""
    model = get_user_model()
    if model.objects.filter(is_superuser=True).exists():
        return None
    password = secrets.token_urlsafe(12)
    user_create(username=username, email="", password=password, role=ADMINISTRATOR)
    return password
