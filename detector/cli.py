"""Command line: builds Settings once and hands them down.

Exit codes: 0 done, 2 bad usage or invalid configuration (the message names the key),
1 any other failure (the message says which file and what is wrong).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import structlog

from detector import __version__
from detector.config import Settings, load_settings
from detector.errors import ConfigError, DetectorError, InputFileError
from detector.logging import configure_logging

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from detector.config import TrainingSettings
    from detector.io.series_files import Series
    from detector.model.params import LSTMParams
    from detector.retrain.registry import ModelRegistry
    from detector.retrain.topic_source import TopicRange
    from detector.stream.pipeline import ModelGroup

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
        help="train a model offline on files or a Kafka topic and write a model file",
        description="Train the LSTM by BPTT on windows cut from the input series, read from "
        "files or from a range of a Kafka topic.",
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="CSV (timestamp,value[,...]) or JSON-lines files",
    )
    source.add_argument(
        "--from-topic",
        nargs="?",
        const="",
        metavar="TOPIC",
        help="read the points of --group's streams from a Kafka topic, decoded in run.format "
        "(default topic: kafka.input_topic); without a range, the whole topic up to its end "
        "at start",
    )
    window = train.add_argument_group(
        "topic range (with --from-topic; times are Kafka record timestamps, ends exclusive)"
    )
    window.add_argument("--from-time", metavar="TIME", help="RFC 3339 or epoch seconds")
    window.add_argument("--to-time", metavar="TIME", help="RFC 3339 or epoch seconds")
    window.add_argument(
        "--last", metavar="DURATION", help="the last DURATION up to now (6h, 90m, 2d, 1w)"
    )
    window.add_argument(
        "--from-offset",
        metavar="SPEC",
        help="N (every partition) or P:N[,P:N...] (those partitions; others from their start)",
    )
    window.add_argument(
        "--to-offset",
        metavar="SPEC",
        help="N or P:N[,P:N...], exclusive (partitions not listed: up to their end)",
    )
    train.add_argument("--out", type=Path, metavar="FILE", help="model file (.npz)")
    train.add_argument(
        "--publish",
        action="store_true",
        help="make the model the group's current version: on the models topic with "
        "--from-topic or run.source = kafka, else in the model registry",
    )
    train.add_argument(
        "--group",
        default="default",
        help="the model group (its sizes, fields and calendar) for --publish, and whose "
        "streams --from-topic reads (default: default)",
    )
    _add_models_dir_flag(train)
    _add_config_flag(train)
    train.add_argument("--epochs", type=int, help="maximum epochs (training.epochs)")
    train.add_argument("--window", type=int, help="points per window (training.window_len)")
    train.add_argument("--batch-size", type=int, help="windows per batch (training.batch_size)")
    train.add_argument("--learning-rate", type=float, help="Adam step (training.learning_rate)")
    train.add_argument("--seed", type=int, help="seed of init, split and order (training.seed)")
    train.add_argument("--hidden-size", type=int, help="LSTM width (model.hidden_size)")
    train.add_argument("--layers", type=int, help="stacked LSTM layers (model.layers)")
    train.set_defaults(handler=_cmd_train)
    _add_model_commands(commands)

    run = commands.add_parser(
        "run",
        help="score metric streams and print alerts (embedded: file or stdin in)",
        description="Run the detection pipeline until the input ends (or for ever with "
        "--follow). Alerts are JSON lines on the sink; logs go to stderr.",
    )
    _add_config_flag(run)
    run.add_argument("--source", help='"stdin", "file:PATH" or "kafka" (run.source)')
    run.add_argument("--sink", help='"stdout", "file:PATH" or "kafka" (run.sink)')
    run.add_argument(
        "--format",
        help="native, influx, telegraf_json or prometheus_json (run.format)",
    )
    run.add_argument("--dead-letter", help='"log", "file:PATH" or "kafka" (run.dead_letter)')
    run.add_argument("--state-dir", help="checkpoint directory (state.dir)")
    run.add_argument(
        "--follow", action="store_true", help="at the end of a file, wait for more lines"
    )
    run.set_defaults(handler=_cmd_run)

    evaluate = commands.add_parser(
        "evaluate",
        help="replay a labelled NAB-format corpus and print its NAB scores",
        description="Replay every series of a NAB-format corpus through the pipeline "
        "(interleaved by timestamp), then score it as the Numenta Anomaly Benchmark does: "
        "standard, reward_low_FP_rate and reward_low_FN_rate, one threshold per profile "
        "optimised over the corpus (in-sample) and, leaving one category out, on the other "
        "categories (out-of-fold); at the shipped threshold (scoring.threshold), the profiles "
        "and event-level precision, recall and F1 of production's alerts. Everything is "
        "reported beside a second replay with the persistence forecast (scoring.forecast), "
        "the LSTM's ablation. Labels are read by the scorer only.",
    )
    evaluate.add_argument(
        "--data", required=True, type=Path, metavar="DIR", help="<category>/<name>.csv files"
    )
    evaluate.add_argument(
        "--labels", required=True, type=Path, metavar="FILE", help="combined_windows.json"
    )
    evaluate.add_argument(
        "--out", type=Path, metavar="DIR", help="write DIR/<category>/detector_<name>.csv"
    )
    evaluate.add_argument("--plots", type=Path, metavar="DIR", help="one PNG per series")
    evaluate.add_argument("--report", type=Path, metavar="FILE", help="JSON report")
    evaluate.add_argument(
        "--train-points",
        type=Path,
        metavar="FILE",
        help="each file's train part, {name: rows}, left out of the event-level metrics "
        "(default: train_points.json beside --labels if there is one, else every row counts)",
    )
    evaluate.add_argument(
        "--folds",
        choices=("category", "none"),
        help="out-of-fold NAB scores, leaving one category folder out at a time (default: "
        "category when the corpus has more than one)",
    )
    evaluate.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        help="skip the second replay with scoring.forecast = persistence",
    )
    _add_config_flag(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

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


def _add_model_commands(commands: Any) -> None:
    model = commands.add_parser(
        "model",
        help="list, show or roll back model versions in the registry",
        description="Model versions of the embedded registry (retraining.models_dir, default "
        "<state.dir>/models). A running daemon picks up a rollback within seconds.",
    )
    model_commands = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    listing = model_commands.add_parser("list", help="versions, oldest first; * marks current")
    listing.add_argument("--group", help="only this model group")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    show = model_commands.add_parser("show", help="everything the registry knows of a version")
    show.add_argument("version", metavar="VERSION", help="version id (or a unique prefix)")
    show.add_argument("--group", help="the group, when the id is ambiguous")
    rollback = model_commands.add_parser("rollback", help="make a version its group's current one")
    rollback.add_argument("version", metavar="VERSION", help="version id (or a unique prefix)")
    rollback.add_argument("--group", help="the group, when the id is ambiguous")
    listing.set_defaults(handler=_cmd_model_list)
    show.set_defaults(handler=_cmd_model_show)
    rollback.set_defaults(handler=_cmd_model_rollback)
    for sub in (listing, show, rollback):
        _add_models_dir_flag(sub)
        _add_config_flag(sub)


def _add_models_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models-dir",
        type=Path,
        metavar="DIR",
        help="model registry (default: retraining.models_dir, else <state.dir>/models)",
    )


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

    if settings.run.source == "kafka":
        from detector.service.kafka_runner import KafkaRunner

        asyncio.run(KafkaRunner(settings).run())
        return EXIT_OK
    if "kafka" in (settings.run.sink, settings.run.dead_letter):
        raise ConfigError(
            "run.sink / run.dead_letter = 'kafka' needs run.source = 'kafka' (embedded mode "
            "writes alerts to stdout or a file)"
        )
    if args.follow and settings.run.source == "stdin":
        log.warning("follow_ignored", reason="stdin is followed until it closes anyway")
    asyncio.run(Runner(settings, follow=args.follow).run())
    return EXIT_OK


def _cmd_config_show(args: argparse.Namespace, settings: Settings) -> int:
    sys.stdout.write(
        orjson.dumps(settings.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n"
    )
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from detector.evaluate.corpus import train_points_beside
    from detector.evaluate.evaluation import evaluate

    result = evaluate(
        args.data,
        args.labels,
        settings,
        train_points=args.train_points or train_points_beside(args.labels),
        folds=args.folds or "auto",
        baseline=args.baseline,
        out_dir=args.out,
        plots_dir=args.plots,
        report_path=args.report,
    )
    sys.stdout.write(result.summary())
    return EXIT_OK


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    if args.out is None and not args.publish:
        raise ConfigError("train: give --out FILE, --publish, or both")
    if args.from_topic is None:
        flags = ("from_time", "to_time", "last", "from_offset", "to_offset")
        given = [f"--{f.replace('_', '-')}" for f in flags if getattr(args, f) is not None]
        if given:
            raise ConfigError(f"train: {', '.join(given)} only go with --from-topic")
    # Models go where a daemon of this configuration reads them: the models topic in Kafka
    # mode, the local registry in embedded mode.
    to_topic = args.publish and (args.from_topic is not None or settings.run.source == "kafka")
    registry = _registry(args, settings) if args.publish and not to_topic else None
    if args.from_topic is None:
        from detector.io.series_files import read_series

        series = [s for path in args.input for s in read_series(path)]
        source: dict[str, Any] = {"inputs": [str(p) for p in args.input]}
    else:
        series, source = _topic_series(args, settings)
    return _train(series, source, args, settings, registry, to_topic)


def _topic_series(
    args: argparse.Namespace, settings: Settings
) -> tuple[list[Series], dict[str, Any]]:
    """The series of --group's streams in the range of the topic the flags select."""
    from detector.retrain.topic_source import read_topic_series
    from detector.stream.routing import Router

    topic = args.from_topic or settings.kafka.input_topic
    selection = _topic_range(args)
    router = Router(settings.groups)
    group = _model_group(settings, args.group)

    def keep(name: str, tags: str, field: str) -> bool:
        route = router.route(name, tags, field)
        return route is not None and route.group == group.index

    series, report = read_topic_series(settings.kafka, topic, settings.run.format, selection, keep)
    return series, {"inputs": [f"kafka:{topic}"], "topic": report.as_dict()}


def _topic_range(args: argparse.Namespace) -> TopicRange:
    import time

    from detector.retrain.topic_source import (
        TopicRange,
        parse_duration,
        parse_offsets,
        parse_time,
    )

    def parsed(flag: str, parse: Callable[[str], Any]) -> Any:
        text = getattr(args, flag)
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            raise ConfigError(f"--{flag.replace('_', '-')}: {exc}") from None

    from_time = parsed("from_time", parse_time)
    last = parsed("last", parse_duration)
    if last is not None:
        if from_time is not None:
            raise ConfigError("--last and --from-time: give one of them")
        from_time = time.time() - last
    selection = TopicRange(
        from_time=from_time,
        to_time=parsed("to_time", parse_time),
        from_offset=parsed("from_offset", parse_offsets),
        to_offset=parsed("to_offset", parse_offsets),
    )
    if (
        selection.from_time is not None
        and selection.to_time is not None
        and selection.from_time >= selection.to_time
    ):
        raise ConfigError("--to-time: must be later than --from-time (or now minus --last)")
    return selection


def _train(
    series: list[Series],
    source: dict[str, Any],
    args: argparse.Namespace,
    settings: Settings,
    registry: ModelRegistry | None,
    to_topic: bool,
) -> int:
    """Train on ``series`` (from files or a topic: the same path from here on) and write
    or publish the model."""
    # Imported here so `detector --help` and `config show` do not pay for numba's start-up.
    from tqdm import tqdm

    from detector.model.dataset import MIN_STD, windows_from_series
    from detector.model.modelfile import ModelMetadata, save_model
    from detector.model.params import LSTMParams, make_shape
    from detector.model.train import EpochStats, train, validation_count

    # One order whatever the order of the files or the topic's partitions: the windows'
    # order decides the seeded split and shuffles.
    series = sorted(series, key=lambda s: s.name)
    tcfg, mcfg = settings.training, settings.model
    normalization: dict[str, Any] = {"method": "per_series_standardize", "min_std": MIN_STD}
    if args.publish:
        # The group's own shape and inputs, cut like the online windows (retrain.offline).
        from detector.retrain.offline import cut_group_windows, group_inputs
        from detector.retrain.scheduler import feature_names

        group = _model_group(settings, args.group)
        shape = group.shape
        features = feature_names(group)
        clip = settings.streams.input_clip
        inputs = [x for s in series for x in group_inputs(s, group, clip)]
        windows = cut_group_windows(inputs, tcfg.window_len, tcfg.stride)
        normalization["input_clip"] = clip
    else:
        features = series[0].feature_names
        for s in series[1:]:
            if s.feature_names != features:
                raise InputFileError(
                    f"series {s.name} has features {list(s.feature_names)}; "
                    f"{series[0].name} has {list(features)}: one model needs one feature set"
                )
        windows = windows_from_series([s.values for s in series], tcfg.window_len, tcfg.stride)
        shape = make_shape(
            n_inputs=len(features),
            n_outputs=len(features),
            hidden=mcfg.hidden_size,
            layers=mcfg.layers,
            head_hidden=mcfg.head_hidden,
            head_activation=mcfg.head_activation,
            residual=mcfg.residual,
        )
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
        **source,
        "series": len(series),
        "windows": len(windows),
    }
    if args.out is not None:
        stored = save_model(
            args.out,
            params,
            ModelMetadata(feature_names=features, normalization=normalization, training=training),
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
    if registry is not None:
        _publish(registry, args.group, params, windows, features, normalization, training, tcfg)
    if to_topic:
        from detector.retrain.topic_publish import publish_to_models_topic

        publish_to_models_topic(
            settings.kafka,
            args.group,
            params.astype(np.float32),  # as it serves
            ModelMetadata(feature_names=features, normalization=normalization, training=training),
        )
    return EXIT_OK


def _publish(
    registry: ModelRegistry,
    group: str,
    params: LSTMParams,
    windows: NDArray[np.floating],
    features: tuple[str, ...],
    normalization: dict[str, Any],
    training: dict[str, Any],
    tcfg: TrainingSettings,
) -> None:
    """Publish offline weights as the group's current version; the parent (the version it
    replaces) is scored on the same held-out windows, for the record."""
    from detector.model.train import evaluate_loss, validation_split
    from detector.retrain.registry import VersionMeta

    serving = params.astype(np.float32)
    x_val, y_val = validation_split(windows, params.shape.n_outputs, tcfg)
    parent = registry.current(group)
    parent_loss = None
    if parent is not None:
        previous = registry.params(parent, group)
        if previous.shape == params.shape:
            parent_loss = evaluate_loss(previous, x_val, y_val, tcfg.washout)
    version = registry.publish(
        group,
        serving,
        VersionMeta(
            feature_names=features,
            parent=parent,
            source="train",
            candidate_loss=evaluate_loss(serving, x_val, y_val, tcfg.washout),
            parent_loss=parent_loss,
            windows=len(windows),
            data={"inputs": training["inputs"], "series": training["series"]},
            training=training,
            normalization=normalization,
        ),
    )
    log.info("model_published", group=group, version=version, parent=parent, dir=str(registry.dir))


def _model_group(settings: Settings, name: str) -> ModelGroup:
    from detector.stream.pipeline import ModelGroup
    from detector.stream.routing import Router

    groups = Router(settings.groups).groups
    for index, group in enumerate(groups):
        if group.name == name:
            return ModelGroup(group, settings, index)
    raise ConfigError(f"--group: no model group {name!r} (groups: {[g.name for g in groups]})")


def _registry(args: argparse.Namespace, settings: Settings) -> ModelRegistry:
    from detector.retrain.registry import ModelRegistry, models_dir

    directory = args.models_dir or models_dir(settings)
    if directory is None:
        raise ConfigError(
            "retraining.models_dir: no model registry; set it (or state.dir), or pass --models-dir"
        )
    return ModelRegistry(directory)


def _cmd_model_list(args: argparse.Namespace, settings: Settings) -> int:
    registry = _registry(args, settings)
    infos = registry.list(args.group)
    current = {g: registry.current(g) for g in {i.group for i in infos}}
    if args.json:
        for info in infos:
            doc = {**info.to_dict(), "current": current[info.group] == info.version}
            sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return EXIT_OK
    rows = [
        ("", "GROUP", "VERSION", "CREATED", "SOURCE", "PARENT", "WINDOWS", "LOSS", "PARENT_LOSS")
    ]
    for i in infos:
        rows.append(
            (
                "*" if current[i.group] == i.version else "",
                i.group,
                i.version,
                i.created_at,
                i.source,
                i.parent or "-",
                str(i.windows),
                _loss(i.candidate_loss),
                _loss(i.parent_loss),
            )
        )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for r in rows:
        sys.stdout.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        sys.stdout.write("\n")
    if not infos:
        sys.stdout.write(f"(no model versions in {registry.dir})\n")
    return EXIT_OK


def _cmd_model_show(args: argparse.Namespace, settings: Settings) -> int:
    registry = _registry(args, settings)
    info = registry.get(args.version, args.group)
    doc = {**info.to_dict(), "current": registry.current(info.group) == info.version}
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def _cmd_model_rollback(args: argparse.Namespace, settings: Settings) -> int:
    registry = _registry(args, settings)
    info = registry.get(args.version, args.group)
    previous = registry.current(info.group)
    registry.set_current(info.group, info.version)
    sys.stdout.write(
        f"group {info.group}: current version {info.version} (was {previous or 'none'})\n"
    )
    return EXIT_OK


def _loss(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


if __name__ == "__main__":
    raise SystemExit(main())
