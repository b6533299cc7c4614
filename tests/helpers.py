"""A small named cast for tests: the objects a campaign needs."""

from __future__ import annotations

from django.utils import timezone

from campaigns.models import Campaign, Contact, ContactList, Subscription, Template
from dispatchers.models import Dispatcher
from smtpservers.models import SmtpServer


def make_smtp_server(*, port: int, **extra: object) -> SmtpServer:
    fields: dict[str, object] = {"timeout": 10, **extra}
    return SmtpServer.objects.create(name=f"sink-{port}", host="127.0.0.1", port=port, **fields)


def make_dispatcher(*, smtp_server: SmtpServer | None = None, **extra: object) -> Dispatcher:
    fields: dict[str, object] = {
        "name": f"Dispatcher {Dispatcher.objects.count() + 1}",
        "server_name": "testhost",
        "type": Dispatcher.Type.EMAIL,
        "from_email": "news@herald.test",
        "from_name": "Herald News",
        "messages_per_hour": 100_000,
        "batch_size": 50,
        # Most tests claim many items within one minute; the pacing tests
        # ask for spreading themselves.
        "pacing": Dispatcher.Pacing.FAST,
    }
    if smtp_server is not None:
        fields.update(delivery_mode=Dispatcher.DeliveryMode.SMTP, smtp_server=smtp_server)
    fields.update(extra)
    return Dispatcher.objects.create(**fields)


def make_template(**extra: object) -> Template:
    fields: dict[str, object] = {
        "name": f"Template {Template.objects.count() + 1}",
        "subject": "Hello {{ contact.first_name }}",
        "text_body": "Dear {{ contact.first_name }} {{ contact.last_name }},\n"
        "our news.\nUnsubscribe: {{ unsubscribe_url }}\n",
        "html_body": "<p>Dear {{ contact.first_name }},</p><p>our news.</p>",
    }
    fields.update(extra)
    return Template.objects.create(**fields)


def make_audience(
    count: int, *, name: str = "Newsletter", domain: str = "example.org"
) -> ContactList:
    contact_list = ContactList.objects.create(name=name)
    contacts = Contact.objects.bulk_create(
        Contact(email=f"user{i}@{domain}", first_name=f"First{i}", last_name=f"Last{i}")
        for i in range(count)
    )
    Subscription.objects.bulk_create(
        Subscription(contact=c, contact_list=contact_list) for c in contacts
    )
    return contact_list


def make_campaign(
    *,
    dispatcher: Dispatcher,
    lists: list[ContactList],
    template: Template | None = None,
    status: str = Campaign.Status.DRAFT,
) -> Campaign:
    campaign = Campaign.objects.create(
        name=f"Campaign {Campaign.objects.count() + 1}",
        template=template or make_template(),
        dispatcher=dispatcher,
        status=status,
        scheduled_at=timezone.now() if status != Campaign.Status.DRAFT else None,
    )
    campaign.lists.set(lists)
    return campaign
