"""usertwin: fine-tune language models into twins of real users."""

from usertwin.version import __version__  # noqa: F401  (usertwin.__version__)


def __getattr__(name):
    # `from usertwin import Twin` without importing torch for every CLI command
    if name == "Twin":
        from usertwin.twin import Twin

        return Twin
    raise AttributeError(name)
