from django.urls import path

from executions.api.views import ExecutionViewSet

nested = "tasks/<uuid:task_pk>/executions"
urlpatterns = [
    path("tasks/<uuid:task_pk>/execute", ExecutionViewSet.as_view({"post": "execute"}), name="task-execute"),
    path(nested, ExecutionViewSet.as_view({"get": "list"}), name="task-execution-list"),
    path(
        f"{nested}/<uuid:pk>",
        ExecutionViewSet.as_view({"get": "retrieve", "delete": "destroy"}),
        name="task-execution-detail",
    ),
    path(f"{nested}/<uuid:pk>/log", ExecutionViewSet.as_view({"get": "log"}), name="task-execution-log"),
    path("executions", ExecutionViewSet.as_view({"get": "list"}), name="execution-list"),
]
