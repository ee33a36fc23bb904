"""What every package shares and nothing above it owns: the exception root and address helpers."""
