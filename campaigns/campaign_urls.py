from django.urls import path

from . import report_views

# Included from campaigns/urls.py: names live in the "campaigns" namespace.
urlpatterns = [
    path("campaigns/<int:pk>/", report_views.campaign_report, name="campaign_report"),
    path("campaigns/<int:pk>/live/", report_views.campaign_report_live, name="campaign_live"),
    path(
        "campaigns/<int:pk>/recipients.csv",
        report_views.campaign_recipients_export,
        name="campaign_export",
    ),
]
