from django.db import migrations, models

# The counters of 0011, each split over 8 slots: a statement adds to the
# slot of its session (its backend's number modulo 8), so concurrent
# writers of one campaign (claims, result write-backs) rarely wait for each
# other's row until commit. Every branch is an upsert, deletes included (a
# slot may hold a negative count; readers sum the slots). Rows are still
# applied in (campaign, status) order, so writers never deadlock on them.
COUNTS = """
CREATE OR REPLACE FUNCTION herald_item_counts() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    s smallint := pg_backend_pid() % 8;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO campaigns_campaignstatuscount AS c (campaign_id, status, slot, count)
        SELECT campaign_id, status, s, count(*) FROM new_rows
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (campaign_id, status, slot) DO UPDATE SET count = c.count + EXCLUDED.count;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO campaigns_campaignstatuscount AS c (campaign_id, status, slot, count)
        SELECT campaign_id, status, s, -count(*) FROM old_rows
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (campaign_id, status, slot) DO UPDATE SET count = c.count + EXCLUDED.count;
    ELSE
        INSERT INTO campaigns_campaignstatuscount AS c (campaign_id, status, slot, count)
        SELECT campaign_id, status, s, sum(d) FROM (
            SELECT campaign_id, status, -1 AS d FROM old_rows
            UNION ALL
            SELECT campaign_id, status, 1 AS d FROM new_rows
        ) moved
        GROUP BY 1, 2 HAVING sum(d) <> 0 ORDER BY 1, 2
        ON CONFLICT (campaign_id, status, slot) DO UPDATE SET count = c.count + EXCLUDED.count;
    END IF;
    RETURN NULL;
END
$$;
"""

# Back to one row per (campaign, status): the slots folded into slot 0
# before the function of 0011 comes back (and the slot column goes).
FOLD = """
CREATE TEMPORARY TABLE herald_folded ON COMMIT DROP AS
SELECT campaign_id, status, sum(count) AS count
FROM campaigns_campaignstatuscount GROUP BY 1, 2;
DELETE FROM campaigns_campaignstatuscount;
INSERT INTO campaigns_campaignstatuscount (campaign_id, status, slot, count)
SELECT campaign_id, status, 0, count FROM herald_folded;
"""


def _previous_function() -> str:
    from importlib import import_module

    previous = import_module("campaigns.migrations.0011_status_counts")
    return previous.COUNTS.split("CREATE TRIGGER")[0]


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0020_item_batch_unchecked"),
    ]

    operations = [
        migrations.AddField(
            model_name="campaignstatuscount",
            name="slot",
            field=models.SmallIntegerField(default=0),
        ),
        migrations.RemoveConstraint(
            model_name="campaignstatuscount",
            name="status_count_unique",
        ),
        migrations.RunSQL(migrations.RunSQL.noop, FOLD),
        migrations.AddConstraint(
            model_name="campaignstatuscount",
            constraint=models.UniqueConstraint(
                fields=("campaign_id", "status", "slot"), name="status_count_slot_unique"
            ),
        ),
        migrations.RunSQL(COUNTS, _previous_function()),
    ]
