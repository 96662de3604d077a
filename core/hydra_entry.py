"""The one Hydra entry helper: every command composes ``conf/`` the same way and fails in one line.

``bitfed-train``, ``bitfed-sim`` and ``bitfed-server`` take ``key=value`` overrides of the
repository's ``conf/`` (:data:`CONF_DIR`). :func:`compose_config` turns overrides into a
validated :class:`~core.config.ExperimentConfig` (or one ``ValueError`` line naming the key and
the fix); :func:`hydra_command` wraps a plain ``run(cfg)`` into a console entry point that
answers bad input with ``<command>: error: <one line>`` and exit status 2.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from core.config import ExperimentConfig, register_configs

__all__ = ["CONF_DIR", "APP_DIR", "compose_config", "fail", "hydra_command"]

APP_DIR = Path(__file__).resolve().parents[1]  #: the project: pyproject.toml, conf/
CONF_DIR = APP_DIR / "conf"  #: the Hydra configs every entry point composes


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (one line), not a bug (a traceback)."""
    from core.data import DataError
    from core.runs import RunFailed

    return (DataError, ValueError, FileNotFoundError, FloatingPointError, RunFailed)


def fail(command: str, err: BaseException | str, status: int = 2) -> NoReturn:
    """Print ``<command>: error: <message on one line>`` to stderr and exit with ``status``.

    Every command reports bad input this way (status 2, as argparse does) and a failed run with
    status 1.
    """
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"{command}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def _check_conf_dir(config_dir: Path) -> None:
    if not (config_dir / "config.yaml").is_file():
        raise ValueError(
            f"no Hydra configs at {config_dir}; run from an (editable) checkout of the "
            "repository (pip install -e .)"
        )


def compose_config(overrides: Sequence[str], config_dir: Path = CONF_DIR) -> ExperimentConfig:
    """Compose ``config_dir/config.yaml`` with ``overrides`` into a validated config.

    Raises ``ValueError`` with one line naming the bad override or value and the allowed ones.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    _check_conf_dir(config_dir)
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
            cfg = OmegaConf.to_object(compose(config_name="config", overrides=list(overrides)))
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise ValueError(f"bad config or override: {_one_line(err)}") from None
    finally:
        GlobalHydra.instance().clear()
    if not isinstance(cfg, ExperimentConfig):
        raise ValueError(f"{config_dir}/config.yaml does not compose to an ExperimentConfig")
    return cfg


def _one_line(err: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages, cut to what names the problem."""
    cause = err.__cause__
    if isinstance(cause, ValueError) and not str(err).startswith("Could not override"):
        return " ".join(str(cause).split())  # a __post_init__ check: already one line
    text = str(err).split("Config search path")[0].replace("Available options", "; options")
    text = text.split("full_key:")[0].split("To append to your config use")[0].rstrip(". \n")
    if cause is not None and str(cause).strip():
        text += ": " + str(cause).strip().splitlines()[0]
    if "not in '" in str(cause) and "Could not override" in str(err):
        text += " (misspelt? `--cfg job` lists every key)"
    text = re.sub(r"\s\S+_schema\b", "", text)  # the schemas registered beside the options
    return " ".join(text.split()).replace(" ;", ";").rstrip(":; ")


def hydra_command(command: str, run: Callable[[ExperimentConfig], Any]) -> Callable[[], None]:
    """Console entry point ``command key=value ...`` that calls ``run(cfg)`` under Hydra.

    The overrides are composed once up front (:func:`compose_config`), so a bad key or value is
    one line, not Hydra's block; Hydra's own flags (``--cfg``, ``-m``, ``--help``) go straight to
    Hydra. Under Hydra, an empty ``output_dir`` becomes Hydra's run folder. Bad input raised by
    ``run`` (data, values, missing files) is one line too, with exit status 2.
    """

    def task(dcfg: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        try:
            cfg = OmegaConf.to_object(dcfg)
            if not cfg.output_dir:
                cfg.output_dir = HydraConfig.get().runtime.output_dir
            run(cfg)
        except _user_errors() as err:
            fail(command, err)

    def main() -> None:
        import hydra

        argv = sys.argv[1:]
        try:
            _check_conf_dir(CONF_DIR)
            if not any(arg.startswith("-") for arg in argv):
                compose_config(argv)
        except ValueError as err:
            fail(command, err)
        register_configs()
        hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")(task)()

    main.__doc__ = f"Console entry point ``{command}`` (Hydra overrides as ``key=value``)."
    return main
