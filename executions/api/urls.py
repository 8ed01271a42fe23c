from django.urls import path

from executions.api.views import ExecutionViewSet

# The task is {id} here as on every /tasks/{id}/... route; the execution is {execution_id}.
nested = "tasks/<uuid:id>/executions"
urlpatterns = [
    path("tasks/<uuid:id>/execute", ExecutionViewSet.as_view({"post": "execute"}), name="task-execute"),
    path(nested, ExecutionViewSet.as_view({"get": "list"}), name="task-execution-list"),
    path(
        f"{nested}/<uuid:execution_id>",
        ExecutionViewSet.as_view({"get": "retrieve", "delete": "destroy"}),
        name="task-execution-detail",
    ),
    path(
        f"{nested}/<uuid:execution_id>/log",
        ExecutionViewSet.as_view({"get": "log"}),
        name="task-execution-log",
    ),
    path("executions", ExecutionViewSet.as_view({"get": "list"}), name="execution-list"),
]
