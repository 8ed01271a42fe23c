"""The workflows API (workflow templates and runs)."""
