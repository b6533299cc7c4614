"""Beat runs the refresh-OAuth-tokens job every minute."""

from django.db import migrations

NAME = "Refresh OAuth tokens"
TASK = "smtpservers.tasks.refresh_oauth_tokens"
SECONDS = 60


def create(apps, schema_editor):
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    every, _ = interval_model.objects.get_or_create(every=SECONDS, period="seconds")
    # Tokens are refreshed minutes before they expire, so a run that waited
    # in the broker longer than two intervals is only a duplicate.
    task_model.objects.get_or_create(
        name=NAME,
        defaults={"task": TASK, "interval": every, "enabled": True, "expire_seconds": SECONDS * 2},
    )


def remove(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("smtpservers", "0003_pop_before_smtp_and_global_options"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create, remove)]
