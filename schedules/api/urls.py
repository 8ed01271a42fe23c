from rest_framework.routers import SimpleRouter

from schedules.api import views

router = SimpleRouter(trailing_slash=False)
router.register("schedules", views.ScheduleViewSet, basename="schedule")

urlpatterns = router.urls
