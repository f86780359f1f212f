"""The Celery settings of ktrdr-tasks, for people who look for them at the repository root.

The app reads `ktrdr_tasks.celeryconfig` (inside the package), so a host project's own
`celeryconfig` module can never replace ktrdr's broker settings; this file only re-exports
that module and is not installed. Change settings through the environment (README table).
"""

from ktrdr_tasks.celeryconfig import *  # noqa: F403
