"""The command line checked before Hydra runs: one sentence and exit 2 instead of Hydra's report.

Hydra answers a misspelt key, an unknown group option or a run directory it cannot
create with several lines (or a traceback) and exit status 1. The same mistakes are
found here first, by composing the config exactly as ``rtk train`` would (a tenth
of a second), and said in one sentence:

    error: unknown config key 'hiden_size'; did you mean 'hidden_size'?

Anything this check does not recognise is left to Hydra. With ``HYDRA_FULL_ERROR=1``
or ``RTK_DEBUG=1`` it is skipped, so Hydra's full report comes through.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from toolkit.errors import ConfigError


def _parse_args(argv: list[str]):
    parser = get_args_parser()

    def error(message: str):  # argparse would print and exit: leave odd command lines to Hydra
        raise ValueError(message)

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(argv)


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_module(config_module="toolkit.conf", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def _keys(node, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}{key}"
            if path == "hydra":
                continue
            out.append(path)
            out += _keys(node._get_node(key), path + ".")
    return out


def _unknown_key(key: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if hint:
        return f"unknown config key '{key}'; did you mean '{hint[0]}'?"
    return f"unknown config key '{key}'; to add a new key write +{key}=…"


def _compose_or_explain(lines: list[str]) -> DictConfig:
    """Compose ``lines``; a misspelt key or group option becomes one ConfigError sentence."""
    bad: list[str] = []
    keep = list(lines)
    for _ in range(len(lines) + 1):
        try:
            cfg = _compose(keep)
            break
        except MissingConfigException as e:
            plugin = re.search(r"Could not (?:find|load) '([^']+)'", str(e))
            if plugin and plugin.group(1) in HYDRA_PLUGINS:
                raise ConfigError(_missing_plugin(plugin.group(1), keep)) from None
            found = re.search(r"Could not find '([^']+)'", str(e))
            if not found or not e.options:
                raise
            group, _, option = found.group(1).rpartition("/")
            hint = difflib.get_close_matches(option, e.options, n=1)
            raise ConfigError(f"{group}={option} is not an option of '{group}'; options: "
                              f"{', '.join(e.options)}" + (f" (did you mean {group}={hint[0]}?)" if hint else ""))
        except ConfigCompositionException as e:
            found = re.match(r"Could not override '([^']+)'", str(e))
            if not found or "not in struct" not in str(e.__cause__):
                merging = re.match(r"Error merging override (.+)", str(e))
                if not merging or e.__cause__ is None:
                    raise
                # e.g. a dotted key under a node of strings: +hydra.sweeper.params.model.lr=…
                cause = str(e.__cause__).splitlines()[0]
                raise ConfigError(f"the override {merging.group(1)} cannot be merged into the config "
                                  f"({cause})") from None
            key = found.group(1)
            bad.append(key)
            keep = [line for line in keep if line.partition("=")[0].lstrip("~+").split("@")[0] != key]
    else:  # pragma: no cover - every round removes one override
        return _compose(keep)
    if bad:
        known = _keys(cfg)
        raise ConfigError("; ".join(_unknown_key(key, known) for key in bad))
    return cfg


# Hydra plugins the toolkit's extras install: config path -> (distribution, extra)
HYDRA_PLUGINS = {
    "hydra/launcher/joblib": ("hydra-joblib-launcher", "sweeps"),
    "hydra/sweeper/optuna": ("hydra-optuna-sweeper", "sweeps"),
    "hydra/launcher/submitit_slurm": ("hydra-submitit-launcher", "slurm"),
    "hydra/launcher/submitit_local": ("hydra-submitit-launcher", "slurm"),
}


def _missing_plugin(path: str, lines: list[str]) -> str:
    """The sentence for a group option that only a Hydra plugin (an extra) provides, naming what asked for it."""
    dist, extra = HYDRA_PLUGINS[path]
    group, _, option = path.rpartition("/")
    wanted = f"{group}={option}"
    # hydra/launcher=slurm and hparams_search=optuna reach the plugin's option through our own configs
    asked = next((line for line in lines if line.partition("=")[0].lstrip("+~") in
                  ("hydra/launcher", "hydra/sweeper", "hparams_search")), wanted)
    via = "" if asked == wanted else f" (for {wanted})"
    return f"{asked} needs the {dist} plugin{via}, which is not installed: pip install 'recurrent-toolkit[{extra}]'"


def _run_dir_problem(path: Path) -> str | None:
    """Why a run directory cannot be written, or None (nothing is left behind by the probe)."""
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    try:
        tempfile.TemporaryDirectory(dir=probe).cleanup()
    except OSError as e:
        return f"{probe}: {e.strerror or e}"
    return None


def check(argv: list[str]) -> None:
    """Raise ConfigError for a misspelt key, an unknown option or an unwritable run dir."""
    try:
        args = _parse_args(argv)
    except ValueError:
        return
    modes = [flag for flag, given in (("--run", args.run), ("-m/--multirun", args.multirun), ("--cfg", args.cfg),
                                      ("--info", args.info), ("--shell-completion", args.shell_completion)) if given]
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)} cannot be combined: give one of --run, -m/--multirun, --cfg, "
                          "--info and --shell-completion")
    if args.config_path or args.config_name or args.config_dir or args.experimental_rerun:
        return  # another config than the toolkit's: Hydra's own checks apply
    try:
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except Exception:  # a syntax error: Hydra says where
        return
    lines = []
    for o in parsed:
        # a sweep is checked with its first value; Hydra checks the rest when it runs them
        if o.is_delete() and o.value() is None:
            lines.append(o.get_key_element())
        elif o.is_sweep_override():
            lines.append(f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}")
        else:
            lines.append(o.input_line)
    cfg = _compose_or_explain(lines)
    if args.help or args.hydra_help or args.info or args.cfg or args.shell_completion:
        return
    key = "hydra.sweep.dir" if args.multirun else "hydra.run.dir"
    try:
        run_dir = Path(str(OmegaConf.select(cfg, key, throw_on_resolution_failure=True)))
    except Exception:
        return
    if problem := _run_dir_problem(run_dir):
        raise ConfigError(f"cannot write the run directory {run_dir} ({problem}); "
                          f"set {key}=<a directory you can write>")


def check_or_exit(argv: list[str] | None = None) -> None:
    """``check``, printing ``error: …`` and exiting 2 (skipped when a full report is asked for)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("RTK_DEBUG") == "1":
        return
    try:
        check(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
