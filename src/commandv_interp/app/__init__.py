"""App: the ``commandv`` command line and the one-command demo, thin layers over the public API."""
