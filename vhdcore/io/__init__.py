"""The only code that does file I/O on images: ImageFile, raw files, streams."""
