"""The hook endpoint, outside /api/ (no API key: each trigger authenticates its own sender)."""

from django.urls import path

from triggers import views

urlpatterns = [path("<str:trigger_id>", views.hook, name="trigger-hook")]
