"""The index root on disk: layout, manifest, update log, sharding, users and fault injection."""
