"""The CLI's one error type: a one-line message for the user and a non-zero exit."""


class CliError(Exception):
    """Raised anywhere in the CLI; main() prints `weave: <message>` and exits 1."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
