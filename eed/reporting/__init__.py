"""What people read: figures, Rich tables, the files DVC shows, the comparison tables."""
