"""The one exception type for bad input, so every entry point can report it the same way."""


class InputError(ValueError):
    """Bad input from a user: a file, a name, an id or a request value.

    The message is one line that names the field (or file) and the reason.
    The CLI prints it and exits with code 2; the Triton models return it as an
    error response.
    """
