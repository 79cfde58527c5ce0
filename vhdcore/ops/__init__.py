"""Operations on any virtual disk, whatever its format: convert, digest."""
