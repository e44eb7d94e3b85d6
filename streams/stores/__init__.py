"""Profile stores: one interface (``base.ProfileStore``), backends chosen by URL."""
