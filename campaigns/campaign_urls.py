from django.urls import path

from . import action_views, preview_views, report_views

# Included from campaigns/urls.py: names live in the "campaigns" namespace.
urlpatterns = [
    path("campaigns/<int:pk>/", report_views.campaign_report, name="campaign_report"),
    path("campaigns/<int:pk>/live/", report_views.campaign_report_live, name="campaign_live"),
    path(
        "campaigns/<int:pk>/recipients.csv",
        report_views.campaign_recipients_export,
        name="campaign_export",
    ),
    path(
        "campaigns/<int:pk>/actions/<str:action>/",
        action_views.campaign_action,
        name="campaign_action",
    ),
    path(
        "campaigns/<int:pk>/preview/",
        preview_views.campaign_preview_page,
        name="campaign_preview",
    ),
    path(
        "templates/<int:pk>/preview/",
        preview_views.template_preview_page,
        name="template_preview",
    ),
]
