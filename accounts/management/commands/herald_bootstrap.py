from django.conf import settings
from django.core.management.base import BaseCommand

from accounts.services import administrator_ensure_first
from dispatchers.services import dispatcher_ensure_local_outbox


class Command(BaseCommand):
    help = "First-run set-up: the first administrator and the Local outbox dispatcher."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username: str, **options):  # type: ignore[no-untyped-def]
        password = administrator_ensure_first(username=username)
        if password:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created the first administrator.\n"
                    f"    user name: {username}\n    password:  {password}\n"
                    "This password is shown once; change it after logging in."
                )
            )
        else:
            self.stdout.write(
                "An administrator exists already; log in with it "
                "(forgot the password? ./manage.py changepassword <user>)."
            )
        dispatcher = dispatcher_ensure_local_outbox(directory=settings.HERALD_OUTBOX_DIR)
        self.stdout.write(f"Dispatcher '{dispatcher}' writes mail to {dispatcher.pickup_directory}")
