"""Format-neutral disk layer: extents, sources, sinks (writers), the rawio view."""
