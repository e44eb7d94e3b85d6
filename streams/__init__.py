"""Stream workers: the long-running job (never imports torch)."""
