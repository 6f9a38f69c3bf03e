"""ocirt: a rootless-first OCI runtime with runc's command line."""

_API = ("Runtime", "Sandbox", "Result", "default_runtime")
_VERSIONS = ("__version__", "OCI_VERSION")


def __getattr__(name: str):
    # Loaded on first use: the CLI's hot path never pays for the API, and the package imports nothing
    # (its modules take the versions from ocirt.version, so none of them needs the package itself).
    if name in _VERSIONS:
        from ocirt import version

        return getattr(version, name)
    if name in _API:
        from ocirt import api

        return getattr(api, name)
    raise AttributeError(f"module 'ocirt' has no attribute {name!r}")
