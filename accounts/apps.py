from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Users and roles"

    def ready(self) -> None:
        from .roles import roles_sync_after_migrate

        # New models bring new permissions; keep every role's set exact.
        post_migrate.connect(roles_sync_after_migrate, dispatch_uid="herald-roles-sync")
