"""ocirt: a rootless-first OCI runtime with runc's command line."""

__version__ = "0.1.0"
OCI_VERSION = "1.3.0"

_API = ("Runtime", "Sandbox", "Result", "default_runtime")


def __getattr__(name: str):
    # Loaded on first use: the CLI's hot path never pays for the API.
    if name in _API:
        from ocirt import api

        return getattr(api, name)
    raise AttributeError(f"module 'ocirt' has no attribute {name!r}")
