"""Command line: builds Settings once and hands them down.

Exit codes: 0 done, 2 bad usage or invalid configuration (the message names the key),
1 any other failure (the message says which file and what is wrong).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import structlog

from detector import __version__
from detector.config import Settings, load_settings
from detector.errors import ConfigError, DetectorError, InputFileError
from detector.logging import configure_logging

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

log = structlog.get_logger("detector.cli")

# Command-line flag -> settings key. Flags override the environment and the TOML file.
_TRAIN_OVERRIDES = {
    "epochs": "training.epochs",
    "window": "training.window_len",
    "batch_size": "training.batch_size",
    "learning_rate": "training.learning_rate",
    "seed": "training.seed",
    "hidden_size": "model.hidden_size",
    "layers": "model.layers",
}

_RUN_OVERRIDES = {
    "source": "run.source",
    "sink": "run.sink",
    "format": "run.format",
    "dead_letter": "run.dead_letter",
    "state_dir": "state.dir",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detector",
        description="Streaming anomaly detection with per-stream LSTM state.",
    )
    parser.add_argument("--version", action="version", version=f"detector {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = commands.add_parser(
        "train",
        help="train a model offline on CSV or JSON-lines files and write a model file",
        description="Train the LSTM by BPTT on windows cut from the input series.",
    )
    train.add_argument(
        "--input",
        nargs="+",
        required=True,
        type=Path,
        metavar="PATH",
        help="CSV (timestamp,value[,...]) or JSON-lines files",
    )
    train.add_argument("--out", required=True, type=Path, metavar="FILE", help="model file (.npz)")
    _add_config_flag(train)
    train.add_argument("--epochs", type=int, help="maximum epochs (training.epochs)")
    train.add_argument("--window", type=int, help="points per window (training.window_len)")
    train.add_argument("--batch-size", type=int, help="windows per batch (training.batch_size)")
    train.add_argument("--learning-rate", type=float, help="Adam step (training.learning_rate)")
    train.add_argument("--seed", type=int, help="seed of init, split and order (training.seed)")
    train.add_argument("--hidden-size", type=int, help="LSTM width (model.hidden_size)")
    train.add_argument("--layers", type=int, help="stacked LSTM layers (model.layers)")
    train.set_defaults(handler=_cmd_train)

    run = commands.add_parser(
        "run",
        help="score metric streams and print alerts (embedded: file or stdin in)",
        description="Run the detection pipeline until the input ends (or for ever with "
        "--follow). Alerts are JSON lines on the sink; logs go to stderr.",
    )
    _add_config_flag(run)
    run.add_argument("--source", help='"stdin" or "file:PATH" (run.source)')
    run.add_argument("--sink", help='"stdout" or "file:PATH" (run.sink)')
    run.add_argument(
        "--format",
        help="native, influx, telegraf_json or prometheus_json (run.format)",
    )
    run.add_argument("--dead-letter", help='"log" or "file:PATH" (run.dead_letter)')
    run.add_argument("--state-dir", help="checkpoint directory (state.dir)")
    run.add_argument(
        "--follow", action="store_true", help="at the end of a file, wait for more lines"
    )
    run.set_defaults(handler=_cmd_run)

    config = commands.add_parser(
        "config", help="show the effective configuration", description="Configuration."
    )
    config_commands = config.add_subparsers(
        dest="config_command", metavar="SUBCOMMAND", required=True
    )
    show = config_commands.add_parser(
        "show", help="print the effective configuration (defaults < file < environment)"
    )
    _add_config_flag(show)
    show.set_defaults(handler=_cmd_config_show)
    return parser


def _add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML configuration file (default: $DETECTOR_CONFIG)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        flags = {**_TRAIN_OVERRIDES, **_RUN_OVERRIDES}
        overrides = {key: getattr(args, flag, None) for flag, key in flags.items()}
        settings = load_settings(args.config, overrides)
    except ConfigError as exc:
        print(f"detector: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log)
    try:
        code: int = args.handler(args, settings)
    except ConfigError as exc:
        log.error("configuration_invalid", command=args.command, error=str(exc))
        return EXIT_USAGE
    except DetectorError as exc:
        log.error("command_failed", command=args.command, error=str(exc))
        return EXIT_FAILURE
    return code


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from detector.service.runner import Runner

    if args.follow and settings.run.source == "stdin":
        log.warning("follow_ignored", reason="stdin is followed until it closes anyway")
    asyncio.run(Runner(settings, follow=args.follow).run())
    return EXIT_OK


def _cmd_config_show(args: argparse.Namespace, settings: Settings) -> int:
    sys.stdout.write(
        orjson.dumps(settings.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n"
    )
    return EXIT_OK


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here so `detector --help` and `config show` do not pay for numba's start-up.
    from tqdm import tqdm

    from detector.io.series_files import read_series
    from detector.model.dataset import MIN_STD, windows_from_series
    from detector.model.modelfile import ModelMetadata, save_model
    from detector.model.params import LSTMParams, make_shape
    from detector.model.train import EpochStats, train, validation_count

    series = [s for path in args.input for s in read_series(path)]
    features = series[0].feature_names
    for s in series[1:]:
        if s.feature_names != features:
            raise InputFileError(
                f"series {s.name} has features {list(s.feature_names)}; "
                f"{series[0].name} has {list(features)}: one model needs one feature set"
            )
    tcfg, mcfg = settings.training, settings.model
    windows = windows_from_series([s.values for s in series], tcfg.window_len, tcfg.stride)
    log.info(
        "training_data_loaded",
        series=len(series),
        points=sum(len(s.values) for s in series),
        windows=len(windows),
        window_len=tcfg.window_len,
        features=list(features),
    )
    if len(windows) < 2:
        raise InputFileError(
            f"the inputs give {len(windows)} window(s) of {tcfg.window_len} points; "
            "at least 2 are needed: give more data or a smaller --window"
        )
    shape = make_shape(
        n_inputs=len(features),
        n_outputs=len(features),
        hidden=mcfg.hidden_size,
        layers=mcfg.layers,
        head_hidden=mcfg.head_hidden,
        head_activation=mcfg.head_activation,
        residual=mcfg.residual,
    )
    dtype = np.float32 if tcfg.dtype == "float32" else np.float64
    initial = LSTMParams.init(shape, np.random.default_rng(tcfg.seed), dtype=dtype)

    n_train = len(windows) - validation_count(len(windows), tcfg.val_fraction)
    with tqdm(
        total=tcfg.epochs * n_train,
        unit="win",
        desc="training",
        disable=None,
        file=sys.stderr,
        leave=False,
    ) as bar:

        def on_epoch(stats: EpochStats, improved: bool) -> None:
            log.info(
                "epoch_finished",
                epoch=stats.epoch,
                train_loss=round(stats.train_loss, 6),
                val_loss=round(stats.val_loss, 6),
                best=improved,
                seconds=round(stats.seconds, 2),
            )

        params, report = train(windows, initial, tcfg, on_batch=bar.update, on_epoch=on_epoch)

    training: dict[str, Any] = {
        "report": report.to_dict(),
        "settings": tcfg.model_dump(mode="json"),
        "inputs": [str(p) for p in args.input],
        "series": len(series),
        "windows": len(windows),
    }
    stored = save_model(
        args.out,
        params,
        ModelMetadata(
            feature_names=features,
            normalization={"method": "per_series_standardize", "min_std": MIN_STD},
            training=training,
        ),
    )
    log.info(
        "model_saved",
        path=str(args.out),
        best_epoch=report.best_epoch,
        initial_val_loss=round(report.initial_val_loss, 6),
        best_val_loss=round(report.best_val_loss, 6),
        epochs_run=len(report.epochs),
        seconds=round(report.wall_time_s, 1),
        content_hash=stored.content_hash,
    )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
