from django.urls import path

from .webhooks import MailgunTracking, PostmarkTracking, esp_tracking

app_name = "bounces"
urlpatterns = [
    # One URL per API dispatcher, shown on its page.
    path("<slug:provider>/<int:dispatcher_id>/", esp_tracking, name="esp_tracking"),
    # The first two, from before per-dispatcher keys: still served.
    path("mailgun/tracking/", MailgunTracking.as_view(), name="mailgun_tracking"),
    path("postmark/tracking/", PostmarkTracking.as_view(), name="postmark_tracking"),
]
