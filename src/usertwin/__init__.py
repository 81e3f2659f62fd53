"""usertwin: fine-tune language models into twins of real users."""

__version__ = "0.1.0"


def __getattr__(name):
    # `from usertwin import Twin` without importing torch for every CLI command
    if name == "Twin":
        from usertwin.twin import Twin

        return Twin
    raise AttributeError(name)
