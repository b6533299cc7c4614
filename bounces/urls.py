from django.urls import path

from .webhooks import MailgunTracking, PostmarkTracking

app_name = "bounces"
urlpatterns = [
    path("mailgun/tracking/", MailgunTracking.as_view(), name="mailgun_tracking"),
    path("postmark/tracking/", PostmarkTracking.as_view(), name="postmark_tracking"),
]
