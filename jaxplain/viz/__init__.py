"""Pictures: the self-contained HTML report of explained decisions."""
