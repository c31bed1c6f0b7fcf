"""The two ways a path can fail before any signature is read."""


class BadInput(Exception):
    """Not a release at all (no such path, not a release tree, an unreadable archive, a destination in use): the
    message says what was expected. The CLI exits 2."""


class UnsafeArchive(Exception):
    """A readable archive holding an entry no official release has (a link, a device, a path outside
    ``nextcloud/``, a duplicate, too much data): the release is refused. The CLI exits 1."""
