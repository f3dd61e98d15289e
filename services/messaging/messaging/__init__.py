"""messaging: secure message threads between patients and their care team."""
