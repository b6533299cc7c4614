from django.apps import AppConfig


class BouncesConfig(AppConfig):
    name = "bounces"
