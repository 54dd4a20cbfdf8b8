"""The live index: a published version plus the update log's changes, searchable at once."""
