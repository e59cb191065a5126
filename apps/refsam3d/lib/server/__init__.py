"""Server-side safety of the app: names that reach the filesystem, atomic datastore writes, authentication."""
