"""Where resources live: the embedded SQLite store and the shared in-memory indexes."""
