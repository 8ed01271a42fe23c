from django.urls import path

from ops.api import views

urlpatterns = [
    path("status", views.StatusView.as_view(), name="status"),
]
