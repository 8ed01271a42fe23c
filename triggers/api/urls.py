from rest_framework.routers import SimpleRouter

from triggers.api import views

router = SimpleRouter(trailing_slash=False)
router.register("triggers", views.TriggerViewSet, basename="trigger")

urlpatterns = router.urls
