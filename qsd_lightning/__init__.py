"""qsd-lightning."""
