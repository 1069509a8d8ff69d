"""Ready-made downstreams for flume_rx workers, each behind its own optional extra.

- `flume_rx.integrations.ses`: AWS SES (SESv2) send and bulk-send workers, needs ``flume_rx[ses]``.

Nothing is imported here, so ``import flume_rx.integrations`` never needs an optional dependency.
"""

from __future__ import annotations
