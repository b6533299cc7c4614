from typing import Any

from django.apps import AppConfig


class BouncesConfig(AppConfig):
    name = "bounces"

    def ready(self) -> None:
        from anymail.signals import tracking

        tracking.connect(_tracking_received, dispatch_uid="herald.bounces.tracking")


def _tracking_received(sender: Any, event: Any, esp_name: str, **kwargs: Any) -> None:
    # anymail hands every verified provider event to this signal.
    from .services import esp_event_record

    esp_event_record(provider=esp_name.lower(), event=event)
