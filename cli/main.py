"""The `pqz` entry point: one typer app; every expected error becomes one line and exit status 1."""

from __future__ import annotations

import sys

import typer

from cli import client, local, pipeline, runtime, service
from cli.output import fail

app = typer.Typer(
    name="pqz",
    help="Make trained PyTorch models 20-60x smaller: prune, product-quantize, package as .pqz.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
local.register(app)
pipeline.register(app)
runtime.register(app)
service.register(app)
client.register(app)


def main() -> None:
    """Console script: run the app, turning usage, domain and I/O errors into one clear line."""
    try:
        code = app(standalone_mode=False)
    except typer.Exit as exit_:
        code = exit_.exit_code
    except typer.Abort:
        fail("interrupted", code=130)
    except OSError as error:
        # The file first, as the shell's own tools say it ("x.pqz: Permission denied").
        fail(f"{error.filename}: {error.strerror}" if error.filename else str(error))
    except Exception as error:
        # compression's errors, without importing it here: that would load torch into commands
        # that never use it (`pqz api`). A CompressionError exists only once its module is loaded.
        errors = sys.modules.get("compression.errors")
        if errors is not None and isinstance(error, errors.CompressionError):
            fail(str(error))
        # Usage errors: typer's (possibly vendored) click exceptions, known by their interface.
        if not (hasattr(error, "format_message") and hasattr(error, "exit_code")):
            raise
        context = getattr(error, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if error.exit_code == 2 and context else ""
        # Typer words a bad choice "...: Value error, 'x' is not one of 'a', 'b'." (pydantic's
        # phrasing showing through); the value and the choices are what the user needs.
        message = error.format_message().replace(": Value error, ", ": ").removesuffix(".")
        fail(f"{message}{hint}", code=error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
