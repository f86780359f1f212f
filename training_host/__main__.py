"""`python -m training_host` runs the same entry point as the `ktrdr-training-host` script."""

from training_host.main import main

raise SystemExit(main())
