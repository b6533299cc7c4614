"""Beat runs the process-bounce-email job every minute."""

from django.db import migrations

NAME = "Process bounce email"
TASK = "bounces.tasks.process_bounces"
SECONDS = 60


def create(apps, schema_editor):
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    every, _ = interval_model.objects.get_or_create(every=SECONDS, period="seconds")
    # Expire a queued run after two intervals: a backlog of identical runs
    # in the broker would only read the same mailboxes again.
    task_model.objects.get_or_create(
        name=NAME,
        defaults={"task": TASK, "interval": every, "enabled": True, "expire_seconds": SECONDS * 2},
    )


def remove(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("bounces", "0002_default_rules"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create, remove)]
