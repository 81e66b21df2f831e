"""The sidecar's media stage (docs/media.md): ``stage`` rewrites MEDIA records and the rows
that use them; ``encode`` writes the files."""
