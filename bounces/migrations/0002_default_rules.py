"""The default bounce rules; administrators edit them afterwards."""

from django.db import migrations

RULES = [
    # kind, count, within days, action
    ("hard", 1, 30, "suppress"),
    ("soft", 3, 30, "suppress"),
    ("complaint", 1, 30, "suppress_unsubscribe"),
    ("unknown", 1, 30, "none"),
]


def create(apps, schema_editor):
    rule_model = apps.get_model("bounces", "BounceRule")
    for kind, count, days, action in RULES:
        rule_model.objects.get_or_create(
            kind=kind, defaults={"count": count, "period_days": days, "action": action}
        )


def remove(apps, schema_editor):
    apps.get_model("bounces", "BounceRule").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("bounces", "0001_initial")]

    operations = [migrations.RunPython(create, remove)]
