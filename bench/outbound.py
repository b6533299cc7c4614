"""1. Outbound throughput, end to end.

A campaign of BENCH_SCALE x 100,000 recipients goes through the real
pipeline as deployed: Celery beat runs the generate-items and
process-messages jobs from their stored schedules, one Celery worker (the
job queue and the dispatcher's queue, prefork, concurrency
BENCH_WORKER_CONCURRENCY, default 3 as recommended for 2 cores) renders, builds, sends and
records every result. The dispatcher relays to Postfix's smtp-sink on a
loopback port, with no effective rate limit (batches of BENCH_BATCH_SIZE,
default 500, over BENCH_CONNECTIONS sessions, default 4).

Herald's rate: recipients / (last batch closed - first batch claimed), so
the wait for beat's first tick is not counted, and every claim, render,
build, send and write-back is. A campaign still sending after
BENCH_OUTBOUND_MAX_SECONDS (default 900) is stopped there and its rate so
far reported (sent / (last result - first claim)), with a note.

References in the same run, to the same sink, with the same message size:
smtp-source with 20 reused sessions (the limit of SMTP submission here; at
least 20,000 messages, so setting up the sessions does not dominate),
and the naive Python sender: Django's EmailMultiAlternatives built per
recipient from the same templates, over one reused smtplib connection.
"""

from __future__ import annotations

import os
import statistics
import time

from bench.common import Row, audience_create, scaled

ROWS = [
    Row(
        figure="1. Outbound end to end vs smtp-source (20 sessions)",
        unit="msg/s",
        herald="herald_rate",
        reference="smtp_source_rate",
        reference_label="smtp-source",
        target=">= 5,000/s and >= 0.18 x smtp-source",
        met=lambda h, r: h >= 5000 and (r is None or h >= 0.18 * r),
    ),
    Row(
        figure="1. Outbound end to end vs naive Python sender",
        unit="msg/s",
        herald="herald_rate",
        reference="naive_rate",
        reference_label="naive sender",
        target=">= 10 x naive",
        met=lambda h, r: r is not None and h >= 10 * r,
    ),
]

RECIPIENTS = scaled(100_000, minimum=2000)
NAIVE = min(RECIPIENTS, scaled(20_000, minimum=1000))
CONCURRENCY = int(os.environ.get("BENCH_WORKER_CONCURRENCY") or 3)
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS") or 4)
BATCH_SIZE = int(os.environ.get("BENCH_BATCH_SIZE") or 500)
MAX_SECONDS = int(os.environ.get("BENCH_OUTBOUND_MAX_SECONDS") or 900)


def sample_message_size(template, dispatcher) -> int:  # type: ignore[no-untyped-def]
    from bench.common import contact_sample
    from campaigns.messages import message_build, template_compile
    from campaigns.models import Campaign, CampaignItem
    from dispatchers.transports.base import message_bytes

    contact = contact_sample(123456)
    campaign = Campaign(pk=1, name="Bench", template=template)
    item = CampaignItem(campaign=campaign, contact=contact, token="0" * 32)
    message = message_build(
        compiled=template_compile(template=template),
        item=item,
        contact=contact,
        campaign=campaign,
        dispatcher=dispatcher,
        return_domain="herald.test",
    )
    return len(message_bytes(message))


def naive_rate(*, port: int, count: int) -> float:
    """Django's EmailMultiAlternatives per recipient, rendered from the same
    templates, with a signed unsubscribe link and the same headers, over
    one smtplib connection kept open."""
    from django.core import signing
    from django.core.mail import EmailMultiAlternatives, get_connection
    from django.template import Context, Template

    from bench.common import HTML, SUBJECT, TEXT
    from campaigns.models import Contact

    contacts = list(
        Contact.objects.order_by("id").values(
            "email", "first_name", "last_name", "attributes", "id"
        )[:count]
    )
    subject, text, html = Template(SUBJECT), Template(TEXT), Template(HTML)
    connection = get_connection(
        "django.core.mail.backends.smtp.EmailBackend", host="127.0.0.1", port=port
    )
    connection.open()
    started = time.perf_counter()
    for c in contacts:
        token = f"{c['id']:032x}"
        link = "https://herald.example.com/u/" + signing.dumps(token, salt="bench") + "/"
        values = {"contact": c, "unsubscribe_url": link}
        plain = Context(values, autoescape=False)
        message = EmailMultiAlternatives(
            subject=subject.render(plain).strip(),
            body=text.render(plain),
            from_email="Herald News <news@herald.test>",
            to=[f"{c['first_name']} {c['last_name']} <{c['email']}>"],
            headers={
                "Message-ID": f"<{token}@herald.test>",
                "List-Unsubscribe": f"<{link}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
            connection=connection,
        )
        message.attach_alternative(html.render(Context(values)), "text/html")
        message.send()
    elapsed = time.perf_counter() - started
    connection.close()
    return len(contacts) / elapsed


def batch_timeline(batches: list, first, last) -> str:  # type: ignore[no-untyped-def]
    """Where a batch's time goes: waiting in the queue (claimed to started)
    and sending (started to closed), and how busy the worker's processes
    were with sending over the run (1.0: every process always in a batch)."""
    waits = [(b.started_at - b.created_at).total_seconds() for b in batches if b.started_at]
    sends = [(b.finished_at - b.started_at).total_seconds() for b in batches if b.finished_at]
    busy = sum(sends) / (CONCURRENCY * (last - first).total_seconds())
    return (
        f"batches: queued median {statistics.median(waits) * 1000:.0f} ms "
        f"(max {max(waits) * 1000:.0f}), sending median {statistics.median(sends) * 1000:.0f} ms "
        f"(max {max(sends) * 1000:.0f}); processes busy sending {busy:.2f} of the time"
    )


def main() -> None:
    from django.db.models import Count, Max

    from bench.common import (
        Celery,
        Results,
        Sink,
        cpu_seconds,
        rss_mb,
        smtp_source_rate,
        template_create,
    )
    from campaigns.models import Batch, Campaign, CampaignItem
    from campaigns.selectors import status_counts
    from campaigns.services import campaign_schedule
    from dispatchers.models import Dispatcher
    from smtpservers.models import SmtpServer

    results = Results()
    sink = Sink()
    try:
        contact_list = audience_create(RECIPIENTS)
        template = template_create()
        dispatcher = Dispatcher.objects.create(
            name="Bench relay",
            server_name="bench",
            type=Dispatcher.Type.EMAIL,
            delivery_mode=Dispatcher.DeliveryMode.SMTP,
            smtp_server=SmtpServer.objects.create(
                name="smtp-sink", host="127.0.0.1", port=sink.port, timeout=30
            ),
            from_email="news@herald.test",
            from_name="Herald News",
            messages_per_hour=1_000_000_000,
            pacing=Dispatcher.Pacing.FAST,
            batch_size=BATCH_SIZE,
            connections=CONNECTIONS,
        )
        size = sample_message_size(template, dispatcher)
        results.note(
            f"{RECIPIENTS:,} recipients, message {size:,} bytes; worker concurrency "
            f"{CONCURRENCY}, batches of {BATCH_SIZE}, {CONNECTIONS} connections per batch"
        )

        rate = smtp_source_rate(port=sink.port, messages=max(RECIPIENTS, 20_000), size=size)
        results.put("smtp_source_rate", rate)
        results.note(f"smtp-source, 20 sessions: {rate or 0:,.0f} msg/s")
        rate = naive_rate(port=sink.port, count=NAIVE)
        results.put("naive_rate", rate)
        results.note(f"naive sender ({NAIVE:,} messages): {rate:,.0f} msg/s")

        campaign = Campaign.objects.create(
            name="Bench outbound", template=template, dispatcher=dispatcher
        )
        campaign.lists.set([contact_list])
        celery = Celery(queues=[dispatcher.queue], concurrency=CONCURRENCY)
        peak_process = peak_tree = cpu = 0.0
        try:
            celery.wait_ready()
            cpu_started = cpu_seconds(celery.worker.pid)
            scheduled = time.perf_counter()
            campaign_schedule(campaign=campaign)
            deadline = scheduled + MAX_SECONDS
            finished = False
            while time.perf_counter() < deadline:
                one, tree = rss_mb(celery.worker.pid)
                cpu = cpu_seconds(celery.worker.pid) - cpu_started
                peak_process, peak_tree = max(peak_process, one), max(peak_tree, tree)
                campaign.refresh_from_db()
                # The counters, not the items: scanning a campaign's items
                # for a live one took 8 ms of PostgreSQL a poll, CPU the
                # workers being measured would otherwise have had.
                live = status_counts(campaign_ids=[campaign.pk], statuses=CampaignItem.LIVE)
                if campaign.audience_complete and not live:
                    finished = True
                    break
                if campaign.status == Campaign.Status.PAUSED or not celery.alive():
                    raise RuntimeError(f"campaign {campaign.status}: {campaign.paused_reason}")
                time.sleep(0.5)
            wall = time.perf_counter() - scheduled
        except Exception:
            print(celery.tail())
            raise
        finally:
            celery.stop()

        batches = Batch.objects.filter(dispatcher=dispatcher)
        first = min(b.created_at for b in batches)
        if finished:
            last = max(b.finished_at for b in batches)
        else:  # stopped at BENCH_OUTBOUND_MAX_SECONDS: the rate so far
            last = CampaignItem.objects.filter(campaign=campaign).aggregate(Max("sent_at"))
            last = last["sent_at__max"]
            results.note(f"stopped after {MAX_SECONDS}s (BENCH_OUTBOUND_MAX_SECONDS)")
        counts = dict(
            CampaignItem.objects.filter(campaign=campaign)
            .values_list("status")
            .annotate(n=Count("id"))
        )
        sent = counts.get(CampaignItem.Status.SENT, 0)
        rate = sent / (last - first).total_seconds()
        results.put("herald_rate", rate)
        results.put("worker_peak_rss_mb", peak_process)
        results.put("worker_cpu_us_per_message", cpu / max(sent, 1) * 1e6)
        sizes = [b.size for b in batches]
        results.note(
            f"Herald: {sent:,} sent in {(last - first).total_seconds():.1f}s from first claim to "
            f"last batch closed ({rate:,.0f} msg/s); {wall:.1f}s from scheduling; "
            f"{len(sizes)} batches (median {statistics.median(sizes):.0f} items); "
            f"statuses {counts}; worker RSS peak {peak_process:.0f} MB per process, "
            f"{peak_tree:.0f} MB all processes; worker CPU {cpu:.1f}s "
            f"({cpu / max(sent, 1) * 1e6:.0f} us a message, every process of the worker)"
        )
        results.note(batch_timeline(list(batches), first, last))
    finally:
        sink.stop()
    results.save()


if __name__ == "__main__":
    from bench.common import django_setup

    django_setup()
    main()
