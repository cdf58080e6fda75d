"""The edges on their own: metrics, logs."""
