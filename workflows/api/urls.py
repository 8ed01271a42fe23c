from rest_framework.routers import SimpleRouter

from workflows.api import views

router = SimpleRouter(trailing_slash=False)
router.register("workflow-templates", views.WorkflowTemplateViewSet, basename="workflow-template")
router.register("workflows", views.WorkflowRunViewSet, basename="workflow")

urlpatterns = router.urls
