from django.urls import include, path

from . import sms_views, tracking_views, views

app_name = "campaigns"
urlpatterns = [
    path("u/<str:signed>/", views.unsubscribe, name="unsubscribe"),
    path("t/<str:key>/o.gif", tracking_views.open_pixel, name="track_open"),
    path("t/<str:key>/c/<int:link_id>/", tracking_views.click, name="track_click"),
    path("sms/status/<int:dispatcher_id>/", sms_views.twilio_status, name="twilio_status"),
    path("subscriptions/<str:signed>/", views.preferences, name="preferences"),
    path("", include("campaigns.import_urls")),
    path("", include("campaigns.campaign_urls")),
]
