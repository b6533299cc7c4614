"""Many recipients fast: contacts and campaign items made with one INSERT
... SELECT each (generate_series), for report and action tests."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth.models import AbstractUser
from django.db import connection

from accounts.services import user_create
from campaigns.models import Campaign, CampaignItem, Contact


def login_as(client, role: str):  # type: ignore[no-untyped-def]
    user: AbstractUser = user_create(
        username=role.lower(), email=f"{role.lower()}@herald.test", password="x", role=role
    )
    client.force_login(user)
    return client


def bulk_items(
    campaign: Campaign,
    count: int,
    *,
    status: str = CampaignItem.Status.PENDING,
    prefix: str = "r",
    sent_at: datetime | None = None,
    smtp_code: int | None = None,
    smtp_response: str = "",
) -> list[int]:
    """`count` new contacts r00001@example.org... and an item for each in
    `status`; returns the contact ids in order."""
    with connection.cursor() as cur:
        cur.execute(
            f"""
            INSERT INTO {Contact._meta.db_table}
                (email, phone, first_name, last_name, language, time_zone, attributes,
                 status, source, created_at, updated_at)
            SELECT %(prefix)s || lpad(g::text, 6, '0') || '@example.org', '', 'First', 'Last',
                   '', '', '{{}}', 'active', 'test', now(), now()
            FROM generate_series(1, %(count)s) g
            ORDER BY g
            RETURNING id
            """,
            {"prefix": prefix, "count": count},
        )
        ids = sorted(row[0] for row in cur.fetchall())
        cur.execute(
            f"""
            INSERT INTO {CampaignItem._meta.db_table}
                (campaign_id, contact_id, status, token, attempts, possibly_duplicated,
                 smtp_response, queue_id, skip_reason, sent_at, smtp_code)
            SELECT %(campaign)s, id, %(status)s, md5(gen_random_uuid()::text),
                   CASE WHEN %(status)s = 'pending' THEN 0 ELSE 1 END, false,
                   %(response)s, '', '', %(sent_at)s, %(code)s
            FROM unnest(%(ids)s::bigint[]) AS id
            """,
            {
                "campaign": campaign.pk,
                "status": status,
                "ids": ids,
                "response": smtp_response,
                "sent_at": sent_at,
                "code": smtp_code,
            },
        )
    return ids
