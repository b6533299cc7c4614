from django.urls import path

from . import views

app_name = "jobs"
urlpatterns = [
    path("", views.job_manager, name="manager"),
    path("live/", views.job_manager_live, name="live"),
    path("history/", views.job_history, name="history"),
    path("<str:job>/run/", views.job_run_now, name="run"),
    path("<str:job>/schedule/", views.job_schedule, name="schedule"),
    path("dispatchers/<int:pk>/pause/", views.dispatcher_pause, name="dispatcher_pause"),
    path("dispatchers/<int:pk>/resume/", views.dispatcher_resume, name="dispatcher_resume"),
]
