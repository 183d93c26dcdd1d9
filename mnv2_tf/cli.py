"""Shared start-up for the absl entry points (train.py, export_tflite.py, ...).

Bad input ends in one line on stderr (`error: ...`) and exit status 2, not a traceback:
`UserError`s raised by the program, absl flag errors, and `--config.FIELD=VALUE` overrides
that name no field of the (locked) config or give it a value of the wrong type.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable

import ml_collections
from absl import app, flags
from absl import logging as absl_logging

from mnv2_tf.config import load_file
from mnv2_tf.errors import UserError

EXIT_USER_ERROR = 2


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def sections(config: ml_collections.ConfigDict, *names: str) -> ml_collections.ConfigDict:
    """A config holding only the sections `names` of `config`: what an entry point that
    reads the rest from a workdir lets the user override (`--config.export.FIELD=...`)."""
    return ml_collections.ConfigDict({name: config[name] for name in names})


def overrides(config_flag, section: str) -> dict:
    """{field: value} of the `--config.SECTION.FIELD=VALUE` flags given on the command line."""
    prefix = f"{section}."
    return {
        path[len(prefix) :]: value
        for path, value in config_flag.override_values.items()
        if path.startswith(prefix)
    }


def _fields(config, prefix: str = "") -> list[str]:
    names = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        names.append(name)
        if hasattr(value, "items"):
            names.extend(_fields(value, name + "."))
    return names


def describe_override_error(
    argv: list[str], error: Exception, config_flag: str = "config", config=None
) -> str:
    """A one-line explanation of a failed `--config.FIELD=VALUE` override (of `config`, or
    of the config file that `--config=` names)."""
    spec = next(
        (a.split("=", 1)[1] for a in argv if a.startswith(f"--{config_flag}=")),
        None,
    )
    try:
        config = config or (load_file(spec) if spec else _default_config(config_flag))
    except Exception as e:  # the config file itself is broken: say so
        return f"cannot load config file {spec} ({type(e).__name__}: {e})"
    if config is None:
        return f"bad --{config_flag} value ({error})"
    valid = _fields(config)
    for arg in argv:
        if not arg.startswith(f"--{config_flag}."):
            continue
        field = arg[len(f"--{config_flag}.") :].split("=", 1)[0]
        if field not in valid:
            parent = field.rpartition(".")[0]
            while parent and parent not in valid:
                parent = parent.rpartition(".")[0]
            siblings = [v for v in valid if v.rpartition(".")[0] == parent]
            close = difflib.get_close_matches(field, valid, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return (
                f"unknown config field {field}{hint}; valid fields"
                f"{' of ' + parent if parent else ''}: {', '.join(siblings)}"
            )
    first_line = str(error).strip().strip("'\"").splitlines()[0] if str(error).strip() else ""
    return f"bad config override ({type(error).__name__}: {first_line})"


def define_config_dict(name: str, config: ml_collections.ConfigDict, help_string: str):
    """`config_flags.DEFINE_config_dict`, whose overrides are parsed from sys.argv as it is
    defined (at import): a bad `--NAME.FIELD=VALUE` is a one-line error there too."""
    from ml_collections import config_flags

    try:
        return config_flags.DEFINE_config_dict(name, config, help_string, lock_config=True)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        fail(describe_override_error(sys.argv, e, name, config))


def _default_config(config_flag: str):
    """The default of a `DEFINE_config_dict` flag (None for a config file flag)."""
    try:
        value = flags.FLAGS[config_flag].default
    except KeyError:
        return None
    return value if isinstance(value, ml_collections.ConfigDict) else None


def config_value(holder: flags.FlagHolder):
    """The parsed config of a `config_flags` flag, or a UserError if its file did not load."""
    config = holder.value
    try:
        config.keys()  # an unloadable file leaves a stand-in that raises on any access
    except OSError as e:
        detail = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
        raise UserError(f"cannot load the config file ({detail}); check the --config path") from e
    return config


def run(main: Callable[[list[str]], None], config_flag: str = "config") -> None:
    """Runs `main` under absl with one-line errors for bad input."""

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            fail(" ".join(line.strip() for line in str(e).splitlines() if line.strip()))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            # ml_collections' config_flags raise these for overrides of a locked config.
            fail(describe_override_error(argv, e, config_flag))
        return []  # unreachable

    def guarded(argv: list[str]) -> None:
        # TensorFlow logs INFO lines through absl; --verbosity=0 brings them back.
        if not flags.FLAGS["verbosity"].present:
            absl_logging.set_verbosity(absl_logging.WARNING)
        try:
            main(argv)
        except UserError as e:
            fail(str(e))

    app.run(guarded, flags_parser=parse)
