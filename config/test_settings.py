"""Settings for the test suite: the real settings, in testing mode (fast hashing)."""

import os

os.environ.setdefault("TASKFORGE_TESTING", "1")

from config.settings import *  # noqa: F403
