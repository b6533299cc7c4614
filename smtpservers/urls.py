from django.urls import path

from . import views

app_name = "smtpservers"
urlpatterns = [
    path("oauth/callback/", views.oauth_callback, name="oauth_callback"),
    path("personal/", views.personal_server, name="personal"),
]
