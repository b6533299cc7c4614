"""3. Item generation: a campaign's items from a list of BENCH_SCALE x
1,000,000 contacts, 1% of them suppressed.

Herald: campaigns.services.items_generate (the generate-items job's
service: page by page, suppressed contacts recorded as skipped). Reference
in the same run: one plain INSERT ... SELECT of the same number of rows
into the same table (a token each, every contact, no audience or
suppression check). Each starts on an emptied, vacuumed table.
"""

from __future__ import annotations

import time

from bench.common import Row, scaled

ROWS = [
    Row(
        figure="3. Item generation, 1% suppressed",
        unit="s",
        herald="herald_seconds",
        reference="insert_select_seconds",
        reference_label="INSERT ... SELECT",
        target="<= 3 x INSERT ... SELECT",
        met=lambda h, r: r is not None and h <= 3 * r,
        digits=1,
    ),
]

CONTACTS = scaled(1_000_000, minimum=10_000)

_PLAIN = """
INSERT INTO campaigns_campaignitem (campaign_id, contact_id, status, skip_reason, token,
                                    attempts, possibly_duplicated, smtp_response, queue_id)
SELECT %(campaign)s, c.id, 'pending', '', md5(gen_random_uuid()::text), 0, false, '', ''
FROM campaigns_contact c
"""


def main() -> None:
    from bench.common import Results, audience_create, sql, template_create, vacuum
    from campaigns.models import Campaign, CampaignItem
    from campaigns.services import campaign_schedule, items_generate
    from dispatchers.models import Dispatcher

    results = Results()
    contact_list = audience_create(CONTACTS, suppressed=True)
    dispatcher = Dispatcher.objects.create(
        name="Bench", server_name="bench", from_email="news@herald.test"
    )
    template = template_create()

    def campaign() -> Campaign:
        made = Campaign.objects.create(name="Bench", template=template, dispatcher=dispatcher)
        made.lists.set([contact_list])
        return made

    vacuum("campaigns_campaignitem")
    started = time.perf_counter()
    sql(_PLAIN, {"campaign": campaign().pk})
    plain = time.perf_counter() - started
    results.put("insert_select_seconds", plain)
    results.note(f"INSERT ... SELECT of {CONTACTS:,} items: {plain:.2f}s")

    sql("TRUNCATE campaigns_campaignitem CASCADE")
    vacuum("campaigns_campaignitem")
    herald = campaign()
    campaign_schedule(campaign=herald)
    started = time.perf_counter()
    items_generate()
    seconds = time.perf_counter() - started
    items = CampaignItem.objects.filter(campaign=herald)
    skipped = items.filter(status=CampaignItem.Status.SKIPPED).count()
    total = items.count()
    results.put("herald_seconds", seconds)
    results.note(
        f"items_generate: {total:,} items ({skipped:,} skipped as suppressed) in {seconds:.2f}s "
        f"({total / seconds:,.0f} items/s)"
    )
    if total != CONTACTS or skipped != CONTACTS // 100:
        raise SystemExit(f"expected {CONTACTS} items, {CONTACTS // 100} skipped")
    results.save()


if __name__ == "__main__":
    from bench.common import django_setup

    django_setup()
    main()
