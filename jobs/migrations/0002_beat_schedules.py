"""The beat schedules of the pipeline jobs, stored by django-celery-beat so
the job manager can change them."""

from django.db import migrations

SCHEDULES = [
    ("Generate campaign items", "campaigns.tasks.generate_items", 5),
    ("Process campaign messages", "campaigns.tasks.process_messages", 5),
    ("Process autoresponder messages", "campaigns.tasks.process_autoresponders", 60),
    ("Mark campaigns as completed", "campaigns.tasks.mark_completed", 10),
    ("Housekeeping (prune history)", "campaigns.tasks.housekeeping", 3600),
]


def create(apps, schema_editor):
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, task, seconds in SCHEDULES:
        every, _ = interval_model.objects.get_or_create(every=seconds, period="seconds")
        # Expire a queued run after one interval: a backlog of identical
        # runs in the broker would only repeat the same work.
        task_model.objects.get_or_create(
            name=name,
            defaults={
                "task": task,
                "interval": every,
                "enabled": True,
                "expire_seconds": seconds * 2,
            },
        )


def remove(apps, schema_editor):
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    task_model.objects.filter(name__in=[s[0] for s in SCHEDULES]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create, remove)]
