"""The `kvmctl` console script: runs the Typer app and maps errors to exit statuses.

Exit statuses (docs/design.md): 0 ok, 1 failure during a change (rolled back),
2 bad input, 3 host cannot satisfy the request. Never a traceback for any of
these: one sentence on stderr.
"""

from __future__ import annotations

import sys

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError

from kvmctl.commands import app
from kvmctl.errors import HostError, KvmctlError, SpecError


def _say(message: str) -> None:
    sys.stderr.write(f"kvmctl: {message.rstrip()}\n")


def main(argv: list[str] | None = None) -> int:
    command = typer.main.get_command(app)
    try:
        # Without standalone mode, click hands a verb's `raise typer.Exit(n)`
        # back as the return value instead of raising it.
        status = command.main(args=argv, prog_name="kvmctl", standalone_mode=False)
    except SpecError as err:
        for problem in err.problems:
            sys.stderr.write(problem + "\n")
        _say(f"{len(err.problems)} problem(s) in the spec; nothing was changed.")
        return err.exit_code
    except HostError as err:
        _say(str(err))
        for reason in err.reasons:
            sys.stderr.write(f"  - {reason}\n")
        return err.exit_code
    except KvmctlError as err:
        _say(str(err))
        return err.exit_code
    except typer.Exit as err:
        return err.exit_code
    except typer.Abort:
        _say("interrupted.")
        return 130
    except NoArgsIsHelpError as err:
        # Help was printed already (a bare `kvmctl` or a verb without its arguments).
        return 2 if err.ctx is not None and err.ctx.parent is not None else 0
    except ClickException as err:
        # Unknown verb, unknown option, missing argument: one sentence and the hint.
        _say(err.format_message() + " (see 'kvmctl --help')")
        return 2
    except KeyboardInterrupt:
        _say("interrupted.")
        return 130
    return status if isinstance(status, int) else 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
