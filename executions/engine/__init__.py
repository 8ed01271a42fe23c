"""The engine: worker, sandbox, queue SQL, wake-ups and waiting. Imports neither rest_framework nor
any api/ module (issue 20)."""
