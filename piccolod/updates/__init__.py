"""What the agent does around Flatcar's update_engine: watch it, and keep a rolled-back version out.

- :mod:`piccolod.updates.engine` asks update_engine for its status (``update_engine_client -status``);
- :mod:`piccolod.updates.watch` polls it in ``piccolod serve`` and takes the regression baseline
  (:mod:`piccolod.baseline`) before the machine reboots into an update;
- :mod:`piccolod.updates.pin` is the update-loop pin in ``/etc/flatcar/update.conf``.

docs/agent.md ("A regression-aware gate", "No update loop") says why each works as it does, from
update_engine's own source.
"""
