from rest_framework.routers import SimpleRouter

from vault.api import views

router = SimpleRouter(trailing_slash=False)
router.register("secrets", views.SecretViewSet, basename="secret")

urlpatterns = router.urls
