from rest_framework.routers import SimpleRouter

from tasks.api import agents, views

router = SimpleRouter(trailing_slash=False)
router.register("tasks", views.TaskViewSet, basename="task")
router.register("agents", agents.AgentViewSet, basename="agent")

urlpatterns = router.urls
