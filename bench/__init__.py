"""``manage.py benchmark``: seeds, measures and reports Taskforge through the real stack.

See docs/performance.md for the figures and how to reproduce them.
"""
