"""Developer tools: read-only checks of the source tree (import cycles, code shape). Not installed."""
