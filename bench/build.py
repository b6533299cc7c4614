"""2. Message build alone: personalised messages per second per core.

Herald: as a batch builds them, the template compiled and the campaign's
shared parts prepared once (campaigns.messages.message_skeleton), then
campaigns.messages.message_render for a stream of different contacts, each
turned into its
wire bytes (dispatchers.transports.base.message_bytes); with DKIM, each is
signed first by dispatchers.signing.Signer (RSA 2048, relaxed/relaxed) as
the send pool does. Reference: the naive build, Django's
EmailMultiAlternatives rendered from the same templates and serialised
(and signed with dkimpy for the DKIM row). About 5 KB per message, HTML and
text parts.

Per core: messages / CPU seconds of this one process, so other work on the
machine does not count against it. Each variant runs for
BENCH_BUILD_SECONDS of CPU (default 10, times BENCH_SCALE, at least 2).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from bench.common import Row, scale

ROWS = [
    Row(
        figure="2. Message build, DKIM off",
        unit="msg/s/core",
        herald="herald_unsigned",
        reference="naive_unsigned",
        reference_label="Django EmailMultiAlternatives",
        target=">= 10,000/s per core",
        met=lambda h, r: h >= 10_000,
    ),
    Row(
        figure="2. Message build, DKIM on",
        unit="msg/s/core",
        herald="herald_signed",
        reference="naive_signed",
        reference_label="EmailMultiAlternatives + dkimpy",
        target="(none set)",
    ),
]

SECONDS = max(2.0, float(os.environ.get("BENCH_BUILD_SECONDS") or 10) * min(scale(), 1.0))
CONTACTS = 1000


def per_cpu_second(build: Callable[[int], bytes]) -> tuple[float, int]:
    """Messages per CPU second of ``build(i)`` for i = 0, 1, 2...; and the
    average size in bytes."""
    count = size = 0
    started = time.process_time()
    while (elapsed := time.process_time() - started) < SECONDS:
        for _ in range(50):
            size += len(build(count))
            count += 1
    return count / elapsed, size // count


def rsa_key() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def herald_builder(*, signed: bool) -> Callable[[int], bytes]:
    from bench.common import contact_sample, template_create
    from campaigns.messages import message_render, message_skeleton, template_compile
    from campaigns.models import Campaign, CampaignItem
    from dispatchers.models import Dispatcher
    from dispatchers.signing import Signer
    from dispatchers.transports.base import message_bytes

    template = template_create()
    compiled = template_compile(template=template)
    campaign = Campaign(pk=1, name="Bench", template=template)
    dispatcher = Dispatcher(from_email="news@herald.test", from_name="Herald News")
    signer = Signer(domain="herald.test", selector="bench", private_key=rsa_key())
    skeleton = message_skeleton(
        campaign=campaign, dispatcher=dispatcher, return_domain="herald.test", compiled=compiled
    )
    contacts = [contact_sample(i) for i in range(CONTACTS)]
    items = [
        CampaignItem(campaign=campaign, contact=c, token=f"{i:032x}")
        for i, c in enumerate(contacts)
    ]

    def build(i: int) -> bytes:
        k = i % CONTACTS
        message = message_render(skeleton=skeleton, item=items[k], contact=contacts[k])
        if signed:
            message = signer.sign(message)
        return message_bytes(message)

    return build


def naive_builder(*, signed: bool) -> Callable[[int], bytes]:
    import dkim
    from django.core import signing
    from django.core.mail import EmailMultiAlternatives
    from django.template import Context, Template

    from bench.common import HTML, SUBJECT, TEXT, contact_sample

    subject, text, html = Template(SUBJECT), Template(TEXT), Template(HTML)
    key = rsa_key()
    contacts = [contact_sample(i) for i in range(CONTACTS)]

    def build(i: int) -> bytes:
        c = contacts[i % CONTACTS]
        token = f"{i:032x}"
        link = "https://herald.example.com/u/" + signing.dumps(token, salt="bench") + "/"
        values = {
            "contact": {
                "email": c.email,
                "first_name": c.first_name,
                "last_name": c.last_name,
                "attributes": c.attributes,
            },
            "unsubscribe_url": link,
        }
        plain = Context(values, autoescape=False)
        message = EmailMultiAlternatives(
            subject=subject.render(plain).strip(),
            body=text.render(plain),
            from_email="Herald News <news@herald.test>",
            to=[f"{c.first_name} {c.last_name} <{c.email}>"],
            headers={
                "Message-ID": f"<{token}@herald.test>",
                "List-Unsubscribe": f"<{link}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        )
        message.attach_alternative(html.render(Context(values)), "text/html")
        data = message.message().as_bytes()
        if signed:
            data = dkim.sign(data, b"bench", b"herald.test", key) + data
        return data

    return build


def main() -> None:
    from bench.common import Results

    results = Results()
    for name, make in (("herald", herald_builder), ("naive", naive_builder)):
        for signed in (False, True):
            rate, size = per_cpu_second(make(signed=signed))
            key = f"{name}_{'signed' if signed else 'unsigned'}"
            results.put(key, rate)
            results.note(f"{key}: {rate:,.0f} msg per CPU second ({size:,} bytes each)")
    results.save()


if __name__ == "__main__":
    from bench.common import django_setup

    django_setup()
    main()
