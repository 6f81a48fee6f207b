"""The version, in a module of its own: the HTTP layer names it in its User-Agent, and importing
the package's __init__ (which pulls in the whole pipeline) from down there would be a circle."""

__version__ = "0.1.0"
