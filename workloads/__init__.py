"""Framework-neutral workloads: architectures, datasets and suites."""
