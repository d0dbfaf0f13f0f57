"""A dataset's problems, one line each; apart from the loaders so that every loader
(sources, imagefolder) raises them without importing another."""


class DatasetError(RuntimeError):
    """A dataset that is there but cannot be read; one line naming the file."""


class DatasetNotFoundError(DatasetError):
    """A dataset that is nowhere; one line naming where it looked and how to get it."""
