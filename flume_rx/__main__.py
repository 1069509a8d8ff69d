"""``python -m flume_rx``: the ``flume-rx`` command line, for when the script is not on PATH."""

from flume_rx.surfaces.cli import main

raise SystemExit(main())
