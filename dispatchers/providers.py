"""The email service providers Herald sends through, by way of django-anymail.

One row per provider: its anymail backend, the name of the backend's key
setting, and the API URL it uses unless the dispatcher gives another
(Mailgun EU, SparkPost EU, a Postal server). Mailjet and Amazon SES need
two credentials; the API key field then holds both as ``id:secret``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Provider:
    label: str
    backend: str
    key_setting: str = "api_key"
    default_url: str = ""  # shown as a hint; "" when the URL is not configurable
    url_required: bool = False
    key_pair: str = ""  # "id:secret" providers: what the two halves are called
    url_hint: str = ""


PROVIDERS: dict[str, Provider] = {
    "sendgrid": Provider(
        "SendGrid",
        "anymail.backends.sendgrid.EmailBackend",
        default_url="https://api.sendgrid.com/v3/",
    ),
    "mailgun": Provider(
        "Mailgun",
        "anymail.backends.mailgun.EmailBackend",
        default_url="https://api.mailgun.net/v3",
        url_hint="EU region: https://api.eu.mailgun.net/v3",
    ),
    "amazon_ses": Provider(
        "Amazon SES",
        "anymail.backends.amazon_ses.EmailBackend",
        key_pair="access key ID:secret access key",
        url_hint="The regional endpoint, e.g. https://email.eu-west-1.amazonaws.com "
        "(its region is used); blank: the AWS_REGION of the environment.",
    ),
    "postmark": Provider(
        "Postmark",
        "anymail.backends.postmark.EmailBackend",
        key_setting="server_token",
        default_url="https://api.postmarkapp.com/",
    ),
    "sparkpost": Provider(
        "SparkPost",
        "anymail.backends.sparkpost.EmailBackend",
        default_url="https://api.sparkpost.com/api/v1/",
        url_hint="EU: https://api.eu.sparkpost.com/api/v1/",
    ),
    "brevo": Provider(
        "Brevo (Sendinblue)",
        "anymail.backends.brevo.EmailBackend",
        default_url="https://api.brevo.com/v3/",
    ),
    "mailjet": Provider(
        "Mailjet",
        "anymail.backends.mailjet.EmailBackend",
        default_url="https://api.mailjet.com/v3.1/",
        key_pair="API key:secret key",
    ),
    "mailersend": Provider(
        "MailerSend",
        "anymail.backends.mailersend.EmailBackend",
        key_setting="api_token",
        default_url="https://api.mailersend.com/v1/",
    ),
    "mandrill": Provider(
        "Mandrill (Mailchimp Transactional)",
        "anymail.backends.mandrill.EmailBackend",
        default_url="https://mandrillapp.com/api/1.0",
    ),
    "mailtrap": Provider(
        "Mailtrap",
        "anymail.backends.mailtrap.EmailBackend",
        key_setting="api_token",
        default_url="https://send.api.mailtrap.io/api/",
    ),
    "postal": Provider(
        "Postal",
        "anymail.backends.postal.EmailBackend",
        url_required=True,
        url_hint="Your Postal server, e.g. https://postal.example.com",
    ),
    "resend": Provider(
        "Resend", "anymail.backends.resend.EmailBackend", default_url="https://api.resend.com/"
    ),
    "unisender_go": Provider(
        "Unisender Go",
        "anymail.backends.unisender_go.EmailBackend",
        url_required=True,
        url_hint="Your account's API URL, e.g. https://go1.unisender.ru/ru/transactional/api/v1/",
    ),
}

CHOICES = [(code, provider.label) for code, provider in PROVIDERS.items()]
