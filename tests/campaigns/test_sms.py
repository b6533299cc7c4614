"""What a marketer sees of an SMS before it goes: the number it goes to
(or why it cannot), the text, and how many segments it costs."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from campaigns.models import Campaign, Contact, Template
from campaigns.sms import InvalidPhone, phone_normalise, sms_preview, sms_segments
from dispatchers.models import Dispatcher
from tests.helpers import make_dispatcher, make_template

# --- segments ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("Hello @ £5, see ÄÖÜ ñ à!", 1),
    ],
)
def test_gsm7_text_is_160_characters_alone_and_153_per_part(text: str, segments: int) -> None:
    assert sms_segments(text) == ("GSM-7", segments)


def test_extension_characters_count_double() -> None:
    assert sms_segments("€" * 80) == ("GSM-7", 1)  # 160 septets
    assert sms_segments("€" * 81) == ("GSM-7", 2)
    assert sms_segments("{[~]}|^\\" + "a" * 144) == ("GSM-7", 1)  # 16 + 144 = 160
    assert sms_segments("{[~]}|^\\" + "a" * 145) == ("GSM-7", 2)


def test_an_escaped_character_is_never_split_between_parts() -> None:
    # 306 septets would fit two parts of 153, but the € (escape + septet)
    # cannot straddle the boundary after 152 characters: three parts.
    assert sms_segments("a" * 152 + "€" + "a" * 152) == ("GSM-7", 3)


def test_one_character_outside_gsm7_makes_the_whole_message_ucs2() -> None:
    assert sms_segments("a" * 70) == ("GSM-7", 1)
    assert sms_segments("a" * 69 + "д") == ("UCS-2", 1)
    assert sms_segments("a" * 70 + "д") == ("UCS-2", 2)
    assert sms_segments("Merci ç") == ("UCS-2", 1)  # ç (lower case) is not in GSM-7


@pytest.mark.parametrize(("count", "segments"), [(70, 1), (71, 2), (134, 2), (135, 3)])
def test_ucs2_is_70_characters_alone_and_67_per_part(count: int, segments: int) -> None:
    assert sms_segments("д" * count) == ("UCS-2", segments)


def test_an_emoji_counts_two_and_is_never_split() -> None:
    assert sms_segments("😀" * 35) == ("UCS-2", 1)  # 70 UTF-16 code units
    # 72 units; 33 emoji (66 units) fill a part of 67, the 34th goes on.
    assert sms_segments("😀" * 36) == ("UCS-2", 2)
    assert sms_segments("😀" * 67) == ("UCS-2", 3)


def test_an_empty_text_is_no_segment() -> None:
    assert sms_segments("") == ("GSM-7", 0)


# --- phone numbers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+1 415 555 0100", "+14155550100"),
        ("+33 6 12 34 56 78", "+33612345678"),
        ("+44 (0)20 7946 0000", "+442079460000"),
        ("  +1-415-555-0100 ", "+14155550100"),
    ],
)
def test_numbers_with_a_country_code_become_e164(raw: str, e164: str, settings) -> None:
    settings.HERALD_SMS_DEFAULT_REGION = ""
    assert phone_normalise(raw) == e164


def test_a_national_number_is_read_in_the_default_region(settings) -> None:
    settings.HERALD_SMS_DEFAULT_REGION = "GB"
    assert phone_normalise("020 7946 0000") == "+442079460000"
    assert phone_normalise("06 12 34 56 78", region="FR") == "+33612345678"


def test_without_a_default_region_a_national_number_is_refused_not_guessed(settings) -> None:
    settings.HERALD_SMS_DEFAULT_REGION = ""
    with pytest.raises(InvalidPhone) as refused:
        phone_normalise("020 7946 0000")
    assert str(refused.value) == (
        "Invalid phone number '020 7946 0000': no country code: write it as "
        "+<country code><number> (no default region is set)."
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("12", "Invalid phone number '12': too short."),
        ("call me", "Invalid phone number 'call me': not a phone number."),
        ("+999 1234 5678", "Invalid phone number '+999 1234 5678': no valid country code."),
        (
            "+1 555 123 4567",
            "Invalid phone number '+1 555 123 4567': not a valid number for US (+1).",
        ),
        ("+44 1234 5678 9012 3456", "Invalid phone number '+44 1234 5678 9012 3456': too long."),
        ("   ", "No phone number."),
    ],
)
def test_invalid_numbers_are_refused_with_the_reason(raw: str, reason: str, settings) -> None:
    settings.HERALD_SMS_DEFAULT_REGION = "US"
    with pytest.raises(InvalidPhone) as refused:
        phone_normalise(raw)
    assert str(refused.value) == reason


# --- preview -------------------------------------------------------------------


@pytest.mark.django_db
def test_the_sms_preview_renders_the_body_for_a_contact_with_its_segments() -> None:
    template = make_template(
        sms_body="Hi {{ contact.first_name|default:'there' }}, {{ campaign.name }}: 20% off ✓"
    )
    contact = Contact(email="zoe@example.org", first_name="Zoe", phone="+14155550100")

    preview = sms_preview(template=template, contact=contact)

    assert preview.text == f"Hi Zoe, {template.name}: 20% off ✓"
    assert (preview.encoding, preview.segments) == ("UCS-2", 1)  # ✓ is not GSM-7


# --- templates and campaigns ------------------------------------------------------


@pytest.mark.django_db
def test_a_template_may_hold_only_an_sms_body() -> None:
    Template(name="Text only", subject="Doors open", sms_body="Doors open at 9").full_clean()


@pytest.mark.django_db
def test_an_sms_campaign_needs_a_template_with_an_sms_body() -> None:
    sms = make_dispatcher(type=Dispatcher.Type.SMS, name="Texts")
    email_only = make_template()
    campaign = Campaign(name="Alert", template=email_only, dispatcher=sms)

    with pytest.raises(ValidationError) as refused:
        campaign.full_clean(exclude=["lists"])
    assert refused.value.message_dict["template"] == [
        "The dispatcher sends SMS: choose a template with an SMS body."
    ]
    campaign.template = make_template(sms_body="Doors open at 9")
    campaign.full_clean(exclude=["lists"])


@pytest.mark.django_db
def test_an_email_campaign_needs_a_template_with_an_email_body() -> None:
    text_only = make_template(html_body="", text_body="", sms_body="Doors open at 9")
    campaign = Campaign(name="News", template=text_only, dispatcher=make_dispatcher())

    with pytest.raises(ValidationError) as refused:
        campaign.full_clean(exclude=["lists"])
    assert "choose a template with an HTML or plain-text body" in str(refused.value)
