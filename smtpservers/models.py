from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from .encryption import EncryptedTextField
from .validators import validate_header_value, validate_host


class SmtpServer(models.Model):
    class Security(models.TextChoices):
        NONE = "none", "None"
        SSL = "ssl", "SSL (implicit TLS)"
        STARTTLS = "starttls", "TLS (STARTTLS)"

    class AuthMethod(models.TextChoices):
        NONE = "none", "None"
        CLEAR_TEXT = "clear", "Clear text"

    name = models.CharField(max_length=100, unique=True)
    host = models.CharField(max_length=253, validators=[validate_host])
    port = models.PositiveIntegerField(
        "SMTP port", default=25, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    security = models.CharField(
        "type of encryption connection",
        max_length=10,
        choices=Security.choices,
        default=Security.NONE,
    )
    verify_certificate = models.BooleanField(
        default=True, help_text="Turn off only for a server whose certificate you trust by hand."
    )
    timeout = models.PositiveSmallIntegerField(
        "timeout (seconds)",
        default=30,
        validators=[MinValueValidator(1), MaxValueValidator(300)],
    )
    helo_name = models.CharField(
        "HELO/EHLO name", max_length=253, blank=True, validators=[validate_header_value]
    )
    auth_method = models.CharField(
        "authentication type", max_length=10, choices=AuthMethod.choices, default=AuthMethod.NONE
    )
    username = models.CharField(
        "SMTP account name", max_length=254, blank=True, validators=[validate_header_value]
    )
    password = EncryptedTextField(blank=True, default="")
    is_active = models.BooleanField("active", default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "SMTP server"

    def __str__(self) -> str:
        return self.name
