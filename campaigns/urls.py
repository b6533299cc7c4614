from django.urls import path

from . import views

app_name = "campaigns"
urlpatterns = [
    path("u/<str:signed>/", views.unsubscribe, name="unsubscribe"),
]
