"""Probes: measure the host, disk, JPEG decode and accelerator. They decide nothing;
each returns a frozen :class:`probes.records.Record` dataclass."""
