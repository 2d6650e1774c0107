"""The one error the local cluster raises."""


class ClusterError(RuntimeError):
    """The cluster could not be built, started or reached; the message says which part."""
