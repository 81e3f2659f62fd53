"""usertwin: fine-tune language models into twins of real users."""

__version__ = "0.1.0"
