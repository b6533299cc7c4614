"""Secrets at rest: an encrypted model field and the keys behind it.

Every secret column holds a Fernet token made with the newest key of
HERALD_ENCRYPTION_KEYS; any listed key can still read it, so keys rotate
without downtime (``manage.py rotate_encryption_keys`` re-encrypts).
The Python value is a :class:`Secret`, whose str() and repr() are masked,
so a secret that reaches a template, a log line or an admin page shows as
dots. Only ``.reveal()`` gives the plaintext, which is easy to grep for.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django import forms
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.utils.text import capfirst

MASK = "••••••••"


class Secret:
    """A plaintext secret that refuses to print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __str__(self) -> str:
        return MASK if self._value else ""

    __repr__ = __str__


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("HERALD_ENCRYPTION_KEYS must list at least one key.")
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(
            "Each HERALD_ENCRYPTION_KEYS entry must be a url-safe base64 32-byte key "
            "(make one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())')."
        ) from exc


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.HERALD_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        # Say which problem it is, never what the value was.
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted with any key in HERALD_ENCRYPTION_KEYS; "
            "was a key removed before rotate_encryption_keys ran?"
        ) from exc


def rotate(token: str) -> str:
    return fernet().rotate(token.encode()).decode()


class SecretFormField(forms.CharField):
    """Write-only: never renders the stored value; blank keeps it."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["required"] = False
        kwargs.setdefault("widget", forms.PasswordInput(render_value=False))
        kwargs.setdefault(
            "help_text", "Stored encrypted and never shown. Leave blank to keep the stored value."
        )
        kwargs.pop("max_length", None)
        super().__init__(strip=False, **kwargs)

    def prepare_value(self, value: Any) -> str:
        return ""

    def has_changed(self, initial: Any, data: Any) -> bool:
        # Blank keeps the stored secret, so only a typed value is a change.
        return bool(data)


class EncryptedTextField(models.TextField):
    """A TextField stored as ciphertext whose Python value is a Secret."""

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> Secret | None:
        if value is None:
            return None
        return Secret(decrypt(value) if value else "")

    def to_python(self, value: Any) -> Secret | None:
        if value is None or isinstance(value, Secret):
            return value
        return Secret(str(value))

    def get_prep_value(self, value: Any) -> str | None:
        if value is None:
            return None
        plaintext = value.reveal() if isinstance(value, Secret) else str(value)
        return encrypt(plaintext) if plaintext else ""

    def value_to_string(self, obj: models.Model) -> str:
        # Serialisers (dumpdata) get the ciphertext, never the plaintext.
        return self.get_prep_value(self.value_from_object(obj)) or ""

    def formfield(self, **kwargs: Any) -> forms.Field:
        extra = {"help_text": self.help_text} if self.help_text else {}
        return SecretFormField(label=capfirst(self.verbose_name), **extra)

    def save_form_data(self, instance: models.Model, data: Any) -> None:
        if data in (None, ""):
            return  # blank in a form means "keep what is stored"
        super().save_form_data(instance, Secret(data) if not isinstance(data, Secret) else data)


def reveal(value: Secret | str | None) -> str:
    """The plaintext of a secret attribute, whether loaded (a Secret) or
    just assigned in Python (a str, until the row is read back)."""
    if isinstance(value, Secret):
        return value.reveal()
    return value or ""
