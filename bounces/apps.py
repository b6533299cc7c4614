from typing import Any

from django.apps import AppConfig


class BouncesConfig(AppConfig):
    name = "bounces"

    def ready(self) -> None:
        from anymail.signals import tracking

        tracking.connect(_tracking_received, dispatch_uid="herald.bounces.tracking")


def _tracking_received(sender: Any, event: Any, esp_name: str, **kwargs: Any) -> None:
    # anymail hands every verified provider event to this signal; "Amazon SES"
    # becomes amazon_ses, the code of dispatchers/providers.py.
    from .services import esp_event_record

    esp_event_record(provider=esp_name.lower().replace(" ", "_"), event=event)
