from django.apps import AppConfig


class SmtpServersConfig(AppConfig):
    name = "smtpservers"
    verbose_name = "SMTP servers"
