from loaderd._version import __version__
