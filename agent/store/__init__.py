"""On-disk state: atomic writes, the state folder layout, content-addressed artifacts and garbage collection."""
