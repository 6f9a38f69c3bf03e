"""The versions, in a module of their own: every module may import them without importing the package
``ocirt``, whose ``__init__`` re-exports the API (``import ocirt; ocirt.Sandbox``) and so imports much."""

__version__ = "0.1.0"
OCI_VERSION = "1.3.0"
