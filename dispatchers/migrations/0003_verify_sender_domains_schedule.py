"""Beat runs the verify-sender-domains job every hour."""

from django.db import migrations

NAME = "Verify sender domains"
TASK = "dispatchers.tasks.verify_sender_domains"
SECONDS = 3600


def create(apps, schema_editor):
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    every, _ = interval_model.objects.get_or_create(every=SECONDS, period="seconds")
    # A run still queued when the next is due would only repeat the same
    # look-ups: let it expire.
    task_model.objects.get_or_create(
        name=NAME,
        defaults={"task": TASK, "interval": every, "enabled": True, "expire_seconds": SECONDS},
    )


def remove(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("dispatchers", "0002_senderdomain"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create, remove)]
