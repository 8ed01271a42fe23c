"""Settings for the benchmark's gunicorn and workers: the production settings, plus the
benchmark's own URL conf (a bare Django view used as the baseline). Never used in production:
only ``manage.py benchmark`` passes this module to the processes it starts.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
