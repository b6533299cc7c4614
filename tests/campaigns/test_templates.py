"""Templates marketers write: personalised, sandboxed, with a text part and
inlined CSS even when they only wrote HTML."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from campaigns.messages import message_build, template_compile
from campaigns.models import CampaignItem, Contact, Template
from tests.helpers import make_audience, make_campaign, make_dispatcher

pytestmark = pytest.mark.django_db


def render(template: Template, **contact_fields: object):
    dispatcher = make_dispatcher(delivery_mode="pickup", pickup_directory="/tmp/unused")
    audience = make_audience(1)
    Contact.objects.filter(pk=audience.contacts.get().pk).update(**contact_fields)
    contact = Contact.objects.get(pk=audience.contacts.get().pk)
    campaign = make_campaign(dispatcher=dispatcher, lists=[audience], template=template)
    item = CampaignItem.objects.create(campaign=campaign, contact=contact)
    return message_build(
        compiled=template_compile(template=template),
        item=item,
        contact=contact,
        campaign=campaign,
        dispatcher=dispatcher,
    )


def body(message, kind: str) -> str:
    return message.parsed().get_body((kind,)).get_content()


@pytest.mark.parametrize(
    "source",
    [
        "{% debug %}",
        "{% load static %}",
        "{% include 'admin/base.html' %}",
        "{% extends 'admin/base.html' %}",
        "{% url 'admin:index' %}",
        "{{ contact.__class__ }}",
        "{% if %}",
    ],
)
def test_code_and_broken_syntax_are_refused_on_save_with_the_line(source):
    template = Template(name="Bad", subject="Hi", text_body=f"Hello\n{source}")

    with pytest.raises(ValidationError) as error:
        template.full_clean()

    assert "Template error" in str(error.value)
    assert "(line 2)" in str(error.value)


def test_templates_see_values_only_never_settings_or_methods(settings):
    settings.SECRET_KEY = "the-secret-key-of-this-test"
    template = Template.objects.create(
        name="Probe",
        subject="Hi",
        text_body="[{{ settings.SECRET_KEY }}][{{ contact.clear }}][{{ contact.items }}]"
        "[{{ campaign.name.upper }}][{{ contact.attributes.plan }}]",
    )

    text = body(render(template, attributes={"plan": "gold"}), "plain")

    assert "the-secret-key-of-this-test" not in text
    assert "object at 0x" not in text
    assert text.startswith("[][][")
    assert "[gold]" in text


def test_placeholders_have_fallbacks():
    template = Template.objects.create(
        name="Fallback", subject='Hi {{ contact.first_name|default:"there" }}', text_body="x"
    )

    assert render(template, first_name="")["Subject"] == "Hi there"


def test_an_html_only_template_gets_a_generated_text_part_and_inlined_css():
    template = Template.objects.create(
        name="HTML only",
        subject="News",
        html_body="<html><head><style>p.lead { color: #c00 }</style></head>"
        "<body><p class='lead'>Dear {{ contact.first_name }},</p>"
        "<p>read <a href='https://example.org/news'>our news</a>.</p></body></html>",
    )

    message = render(template, first_name="Ann")

    assert '<p class="lead" style="color: #c00;">Dear Ann,</p>' in body(message, "html")
    text = body(message, "plain")
    assert "Dear Ann," in text
    assert "[our news](https://example.org/news)" in text
    assert "<p" not in text


def test_a_template_needs_a_body():
    with pytest.raises(ValidationError, match="HTML body, a plain-text body, or both"):
        Template(name="Empty", subject="Hi").full_clean()


def test_text_parts_and_subjects_are_not_html_escaped():
    template = Template.objects.create(
        name="Quotes",
        subject="For {{ contact.last_name }}",
        text_body="Dear {{ contact.last_name }}",
        html_body="<p>{{ contact.last_name }}</p>",
    )

    message = render(template, last_name="O'Brien & <Sons>")

    assert message["Subject"] == "For O'Brien & <Sons>"
    assert "Dear O'Brien & <Sons>" in body(message, "plain")
    assert "O&#x27;Brien &amp; &lt;Sons&gt;" in body(message, "html")
