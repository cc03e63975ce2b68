"""The `bench` command: parse, call the Python API, print."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import warnings
from pathlib import Path

import click

from bench.config import HEARTBEAT_SECONDS, PROGRESS_SECONDS, TrainConfig  # the options' defaults
from bench.data import resized, with_subset
from bench.errors import BenchError, Interrupted
from bench.locations import MLFLOW_ARTIFACTS, MLFLOW_DB, OPTUNA_JOURNAL, RESULTS
from bench.processes import stop_seen, stopping_on_signals
from bench.registry import REFERENCE_VARIANT
from bench.scores import REAL_SAMPLES


class UserError(click.ClickException):
    """A user mistake: one line on stderr, exit status 2, no traceback."""

    exit_code = 2


tracking_uri_option = click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
                                   help=f"MLflow tracking URI [default: sqlite:///{MLFLOW_DB}].")
SEEDS = click.IntRange(0, 2**31 - 1)
"""Seeds every generator takes (NumPy's, which Optuna's samplers use, stops at 2**32 - 1), with room
for a study's trial numbers to be added."""
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
amp_option = click.option("--amp", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                          help="bfloat16 autocast for training. auto: on a CUDA GPU that supports it, float32 on "
                               "the CPU; on: also on a CPU with native bfloat16 (AVX512-BF16, AMX), where it "
                               "reaches a given FID 1.05-1.6x sooner; off: float32. Scoring is always float32.")


def reports_user_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with stopping_on_signals():  # SIGTERM too: it ends the command as Ctrl-C does, named as itself
                return command(*args, **kwargs)
        except BenchError as exc:
            raise UserError(one_line(str(exc))) from None
        except Interrupted as exc:
            stop_seen()
            click.echo(f"{exc}; {exc.then}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # a signal where no handler saves work first (training, studies have theirs)
            stop_seen()
            signum = getattr(exc, "signum", signal.SIGINT)
            click.echo(f"stopped by {signal.Signals(signum).name}; run the same command again", err=True)
            sys.exit(128 + signum)
        except Exception as exc:
            if not failed_server(exc):
                raise
            from bench.connections import masked

            urls = [value for value in kwargs.values() if isinstance(value, str) and "://" in value]
            urls.append(os.environ.get("MLFLOW_TRACKING_URI", ""))
            detail = masked(str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "", urls)
            raise UserError(f"the tracking server failed mid-command ({type(exc).__name__}: {detail}); check that it "
                            "is up (its log says why), then run the command again: nothing recorded is lost") from None
    return wrapper


def one_line(text: str) -> str:
    """``text`` with its line breaks and other control characters escaped: an error message quotes
    values from files, which may hold anything."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def failed_server(exc: Exception) -> bool:
    """Whether ``exc`` is MLflow's or the HTTP layer's: a server that failed after the checks before the command
    (those name the server in one line), e.g. one that died or lost its database mid-command."""
    mlflow, requests = sys.modules.get("mlflow"), sys.modules.get("requests")  # neither imported: neither failed
    return (mlflow is not None and isinstance(exc, mlflow.exceptions.MlflowException)
            or requests is not None and isinstance(exc, requests.RequestException))


@contextlib.contextmanager
def writing(output: Path):
    """A failure to write OUTPUT (-o) is one line that says so, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot write {output} ({exc.strerror}); pass -o a path you can write to") from None


def check_writable(output: Path) -> None:
    """Fails now, not after minutes of work, when OUTPUT (-o) cannot be written; creates nothing."""
    from bench.locations import check_output

    check_output(output)


class OneLineErrors(click.Group):
    """click's own parse errors as one `Error:` line naming the help to read (no usage banner before it),
    and Python warnings as one `warning:` line each (no file name and source line)."""

    def main(self, *args, **kwargs):
        warnings.showwarning = show_warning
        warnings.simplefilter("ignore", DeprecationWarning)  # the libraries' notes to their developers, not ours
        try:
            status = super().main(*args, standalone_mode=False, **kwargs)  # click.exceptions.Exit's status
        except click.UsageError as exc:
            where = f"; see '{exc.ctx.command_path} --help'" if exc.ctx is not None else ""
            click.echo(f"Error: {one_line(exc.format_message().rstrip('.'))}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:  # Ctrl-C at a prompt
            click.echo("stopped by SIGINT; run the same command again", err=True)
            sys.exit(128 + signal.SIGINT)
        if isinstance(status, int) and status:
            sys.exit(status)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    kind = "" if issubclass(category, UserWarning) else f" ({category.__name__})"
    click.echo(f"warning: {one_line(str(message))}{kind}", err=True)


@click.group(cls=OneLineErrors)
def main() -> None:
    """ganbench: which GAN variant, with which hyperparameters, trains best on your data."""
    # Artifacts (sample grids, health.json) are small; MLflow's progress bars would only clutter the output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@main.command("list")
@reports_user_errors
def list_variants() -> None:
    """Lists the registered variants with their hyperparameters, defaults and valid ranges."""
    from bench.registry import TIPS, variants

    for name, cls in variants().items():
        flags = " [conditional]" if cls.conditional else ""
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        click.echo(f"{name}{flags}  ({cls.__module__})\n  {summary}")
        own = {key: spec for key, spec in cls.hparams.items() if key not in TIPS}
        tips = {key: spec for key, spec in cls.hparams.items() if key in TIPS}
        for title, specs in (("", own), ("  tips, off by default:", tips)):
            if title and specs:
                click.echo(title)
            for key, spec in specs.items():
                click.echo(f"    {key:<15} default {spec.default!s:<14} valid {spec.describe():<22} {spec.help}")


def parse_settings(variant: str, settings: tuple[str, ...]) -> dict:
    """--set key=value pairs, typed and range-checked by the variant's declared hyperparameters."""
    from bench.errors import ConfigError
    from bench.registry import get_variant

    cls = get_variant(variant)
    values, given = {}, {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got '{setting}'")
        if key in given:
            raise ConfigError(f"--set {key} is given twice ({given[key]} and {setting}); give it once")
        given[key] = setting
        spec = cls.hparam(key)
        values[key] = spec.check(key, spec.parse(key, text))
    return values


def config_default(name: str):
    """The default of TrainConfig's field NAME: stated once, in the API, so that `bench train` cannot drift from it."""
    return TrainConfig.__dataclass_fields__[name].default


def config_option(name: str, *declarations: str, **kwargs):
    """A `bench train` option that sets TrainConfig's field NAME, with its default; --NAME-WITH-DASHES unless
    DECLARATIONS name it otherwise."""
    return click.option(*declarations or (f"--{name.replace('_', '-')}",), name, default=config_default(name),
                        show_default=True, **kwargs)


image_size_option = click.option(
    "--image-size", type=click.IntRange(1), default=None,
    help="Resize an image folder's images to this side on load (scaled, centre-cropped square): the dataset "
         "imagefolder@SIDE:PATH [default: the images' own size, when they are square].")


@main.command()
@click.option("--variant", required=True, help="Variant name (see `bench list`).")
@config_option("dataset", help="fashion-mnist, digits, mnist, cifar10, imagefolder:PATH or imagefolder@SIDE:PATH.")
@image_size_option
@click.option("--subset", type=int, default=None, metavar="N",
              help="Train on N images of the training split, drawn once, evenly across its classes (the dataset "
                   "NAME[N]); scored against the whole test split.")
@config_option("steps", help="Generator updates.")
@config_option("epochs", help="Train for this many passes of the discriminator over the training split instead "
                              "of --steps (0: use --steps), so that every variant sees the same data.")
@config_option("real_batches", help="Train until the discriminator has seen this many real batches instead of "
                                    "--steps (0: use --steps); compare_gan's training_steps.")
@config_option("batch_size")
@config_option("seed", type=SEEDS)
@device_option
@amp_option
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: results/train/VARIANT-TIMESTAMP].")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override a hyperparameter.")
@config_option("eval_every", help="Score the generator every N steps (0: off).")
@config_option("eval_samples")
@config_option("final_samples", help="Score the finished generator once more on N samples with every extractor "
                                     "(papers: 10000; 0: off).")
@config_option("real_samples", help="Real test images the scorings compare with (all of a smaller split).")
@config_option("features", help="Extractor for the evaluations: domain, inception, or auto (domain where the "
                                "dataset has a domain classifier).")
@click.option("--resume", is_flag=True, help="Continue the run saved in --out.")
@config_option("sample_every", help="Write a sample grid every N steps and at the end (0: only at the end).")
@config_option("checkpoint_every", type=str, metavar="STEPS|DURATION",
               help="Checkpoint every STEPS generator steps (and at least every "
                    f"{config_default('checkpoint_seconds') / 60:g} minutes of training), "
                    "or every DURATION of training instead (90s, 5m, 1h); also at the end, and on Ctrl-C or SIGTERM.")
@config_option("log_every", help="Read the losses from the device every N steps (the loop's only host sync).")
@config_option("doctor", "--doctor/--no-doctor", help="Run the training doctor's checks.")
@config_option("data_root", type=click.Path(), help="Where torchvision datasets live.")
@config_option("download", is_flag=True, help="Download a missing torchvision dataset (needs internet).")
@reports_user_errors
def train(variant, settings, out, resume, checkpoint_every, image_size, subset, **config_fields) -> None:
    """Trains one variant once (no sweep), writing sample grids, losses and a checkpoint to OUT."""
    from bench.engine import default_out, train as run_training

    config_fields["dataset"] = with_subset(resized(config_fields["dataset"], image_size), subset)
    config = TrainConfig(variant=variant, hparams=parse_settings(variant, settings),
                         **parse_checkpoint_every(checkpoint_every), **config_fields)
    if resume and out is None:
        raise UserError("--resume needs --out: the folder of the run to continue")
    given_out = out is not None
    out = out or default_out(variant)
    try:
        result = run_training(config, out, resume=resume, progress=sys.stderr.isatty())
    except Interrupted as exc:
        exc.then = "continue it with the same command and --resume" + ("" if given_out else f" --out {out}")
        raise
    last = result.history.iloc[-1].to_dict() if len(result.history) else {}
    summary = "  ".join(f"{key}={value:.4g}" for key, value in last.items() if key != "step")
    click.echo(f"{variant}: {len(result.history)} steps, {result.images_per_second:.0f} images/s  {summary}")
    if len(result.scores):
        scores = result.scores.iloc[-1].to_dict()
        click.echo("scores at step {}: {}".format(int(scores.pop("step")),
                                                  "  ".join(f"{key}={value:.4g}" for key, value in scores.items())))
    click.echo(f"samples, losses.csv, {'scores.csv, ' if len(result.scores) else ''}checkpoint and config in {out}")


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_checkpoint_every(text: str) -> dict[str, int | float]:
    """--checkpoint-every: a step count ('2000') or a training duration ('90s', '5m', '1h'), which then replaces
    the step count."""
    text = text.strip().lower()
    try:
        if text[-1:] in DURATION_UNITS:
            seconds = float(text[:-1]) * DURATION_UNITS[text[-1]]
            if seconds > 0:
                return {"checkpoint_every": 0, "checkpoint_seconds": seconds}
        elif int(text) > 0:
            return {"checkpoint_every": int(text)}
    except ValueError:
        pass
    raise UserError(f"--checkpoint-every expects a positive step count (1000) or duration (90s, 5m, 1h), "
                    f"got '{text}'")


@main.command()
@click.option("--variant", default=None,
              help="Variant name (see `bench list`), several separated by commas, or 'all': they advance together "
                   "[default: the one the study names].")
@click.option("--study", required=True, help="A study in studies/ (e.g. lr_sweep) or a path to a .toml file.")
@click.option("--trials", type=int, default=None, help="Complete or pruned trials to reach [default: the study's].")
@click.option("--workers", default=1, show_default=True, help="Worker processes sharing the study.")
@click.option("--storage", default=None, help="Optuna storage: postgresql://USER@HOST/DB (shared by machines; "
              "password from the URL, PGPASSWORD or ~/.pgpass), sqlite:///PATH, or a journal file path "
              f"[default: {OPTUNA_JOURNAL}].")
@tracking_uri_option
@device_option
@amp_option
@click.option("--seed", type=SEEDS, default=0, show_default=True, help="Trial N trains with seed SEED+N.")
@click.option("--progress-every", default=PROGRESS_SECONDS, show_default=True,
              help="Seconds between progress lines when the output is not a terminal (in one, a live line).")
@click.option("--heartbeat", default=HEARTBEAT_SECONDS, show_default=True,
              help="With a database storage: seconds between a trial's heartbeats; a trial silent for "
                   "three of them is run again by another worker.")
@reports_user_errors
def run(variant, study, trials, workers, storage, tracking_uri, device, amp, seed, progress_every, heartbeat) -> None:
    """Sweeps variants' hyperparameters with Optuna; every trial is tracked in MLflow."""
    from bench.ranking import study_table
    from bench.runner import run_studies
    from bench.trials import skipped_variants
    from bench.study import load_study
    from bench.tracking import TrackingStore

    spec = load_study(study)
    studies = run_studies(variant, spec, trials=trials, workers=workers, storage=storage, tracking=tracking_uri,
                          device=device, amp=amp, seed=seed, progress=sys.stderr.isatty(),
                          progress_every=progress_every, heartbeat=heartbeat, log=click.echo)
    store = TrackingStore.open(tracking_uri)
    if len(studies) > 1:
        compare_variants(spec.name, store)
    for name, result in studies.items():
        click.echo(f"\nstudy '{result.study_name}': {len(result.trials)} trials in Optuna")
        click.echo(study_table(spec, name, store).to_string(
            index=False, float_format="{:.4g}".format if spec.is_ablation else None))
    export = (f"bench leaderboard --study {spec.name} --effects -o {RESULTS}/{spec.name}-effects.csv" if spec.is_ablation
              else f"bench leaderboard --study {spec.name} -o {RESULTS}/leaderboard.csv")
    click.echo(f"\ncompare the trials:  bench ui --study {spec.name}\nexport the table:    {export}")
    skipped = skipped_variants(studies)
    for name, reason in skipped.items():
        click.echo(f"Error: variant {name} was skipped: {reason}; the others ran their trials", err=True)
    if skipped:
        sys.exit(1)


def compare_variants(study: str, store) -> None:
    """What `bench run` of several variants prints at its end, the plots logged to the study's run."""
    from bench.compare import compare_study, report_lines, write
    from bench.errors import ConfigError

    try:
        comparison = compare_study(study, store)
    except ConfigError as exc:  # e.g. every trial failed: the study itself is over all the same
        click.echo(f"no comparison: {exc}")
        return
    write(comparison, None, store)
    for line in report_lines(comparison):
        click.echo(line)


@main.command("leaderboard")
@click.option("--study", default=None, help="Only this study [default: all].")
@click.option("--variant", default=None, help="Only this variant [default: all].")
@tracking_uri_option
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Mean and std over the best K complete trials.")
@click.option("--effects", "show_effects", is_flag=True,
              help="For an ablation study ([arms]): each arm's effect against the baseline, with a 95% interval.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Also write the table as CSV.")
@reports_user_errors
def leaderboard_command(study, variant, tracking_uri, top_k, show_effects, output) -> None:
    """One row per study x variant x dataset x metric: best value, its trial and parameters, trial counts;
    with --effects, one row per arm of an ablation."""
    from bench.ranking import effects, leaderboard
    from bench.tracking import TrackingStore

    store = TrackingStore.open(tracking_uri)
    table = effects(store, study, variant) if show_effects else leaderboard(store, study, variant, top_k)
    if table.empty:
        raise UserError("no finished trials recorded yet; run `bench run --variant V --study S` first")
    shown = table if show_effects or table["external"].any() else table.drop(columns=["external"])  # no outside entry
    click.echo(shown.to_string(index=False, float_format="{:.4g}".format if show_effects else None))
    if output is not None:
        with writing(output):
            output.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(output, index=False)
        click.echo(f"wrote {output}")


@main.command("compare")
@click.option("--study", required=True, help="The study whose variants to compare.")
@tracking_uri_option
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help=f"Folder for the plots and tables [default: {RESULTS}/compare-STUDY].")
@reports_user_errors
def compare_command(study, tracking_uri, output) -> None:
    """Compares a study's variants at equal budget: the expected best of k trials (k = 1..n, with a
    95% band) and by training seconds, and the chance that one variant's best beats another's.
    Plots go to OUTPUT and to the study's latest `bench run` in MLflow."""
    from bench.compare import compare_study, report_lines, write
    from bench.tracking import TrackingStore

    store = TrackingStore.open(tracking_uri)
    comparison = compare_study(study, store)
    for line in report_lines(comparison):
        click.echo(line)
    output = output or RESULTS / f"compare-{study}"
    with writing(output):
        write(comparison, output, store)
    click.echo(f"plots and tables in {output}")


@main.command()
@click.option("--study", required=True, help="The study to report on.")
@tracking_uri_option
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help=f"The HTML file [default: {RESULTS}/report-STUDY.html].")
@reports_user_errors
def report(study, tracking_uri, output) -> None:
    """Writes one self-contained HTML page on a study (images embedded; opens offline): leaderboard,
    comparison at equal budget with its plots, best samples, doctor findings, failures, provenance."""
    from bench.report import write_report

    output = output or RESULTS / f"report-{study}.html"
    check_writable(output)  # before the store is read and the page rendered
    with writing(output):
        write_report(study, output, tracking_uri)
    click.echo(f"wrote {output}")


@main.command()
@click.option("--study", default=None, help="Open this study's runs table.")
@tracking_uri_option
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address (0.0.0.0 exposes it to the network).")
@reports_user_errors
def ui(study, tracking_uri, port, host) -> None:
    """Starts the MLflow UI on the project's store and prints the address of the runs table
    (with a tracking server's URI, only the address: that server shows the UI itself)."""
    from bench.processes import check_port, serve
    from bench.tracking import TrackingStore

    store = TrackingStore.open(tracking_uri)
    page = store.study_page(study)
    if store.is_server:
        click.echo(f"MLflow UI: {store.uri.rstrip('/')}/{page}")
        return
    check_port(host, port)
    click.echo(f"MLflow UI: http://{host}:{port}/{page}   (Ctrl-C stops it)")
    serve("ui", "--host", host, "--port", str(port), store=store.uri)


@main.command()
@click.option("--backend-store-uri", required=True, envvar="MLFLOW_BACKEND_STORE_URI",
              help="Where the server records runs: postgresql://USER@HOST/DB (or sqlite:///PATH); a password from "
                   "PGPASSWORD, ~/.pgpass or this variable keeps it off the command line, where `ps` shows it.")
@click.option("--artifacts", type=click.Path(path_type=Path), default=MLFLOW_ARTIFACTS,
              show_default=True, help="Where the server keeps artifacts (sample grids, figures, checkpoints).")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Bind address (0.0.0.0: every interface, for workers on other machines).")
@click.option("--allowed-hosts", default=None,
              help="Every HOST:PORT the server is reached by (MLflow refuses a request whose Host header is "
                   "not listed), comma-separated, * as a wildcard: 'trackhost:5000,127.0.0.1:*' [default: "
                   "MLflow's, localhost and private IP addresses].")
@reports_user_errors
def server(backend_store_uri, artifacts, port, host, allowed_hosts) -> None:
    """Starts an MLflow tracking server for workers on many machines (bench run --tracking-uri http://HOST:PORT)."""
    import socket

    from bench.connections import check_store
    from bench.processes import check_port, serve

    check_port(host, port)
    check_store(backend_store_uri, create=True, role="MLflow backend store")
    reached_as = socket.getfqdn() if host in ("0.0.0.0", "::") else host
    click.echo(f"MLflow tracking server: http://{reached_as}:{port}   workers: bench run ... --tracking-uri "
               f"http://{reached_as}:{port}   (Ctrl-C stops it)")
    security = ("--allowed-hosts", allowed_hosts) if allowed_hosts else ()
    serve("server", "--artifacts-destination", str(artifacts.resolve()), "--host", host, "--port", str(port),
          *security, store=backend_store_uri)


@main.command()
@click.argument("run")
@tracking_uri_option
@reports_user_errors
def doctor(run, tracking_uri) -> None:
    """What the training doctor found in RUN: a run folder (bench train --out) or an MLflow run id."""
    from bench.doctor import HEALTH, read_health
    from bench.tracking import TrackingStore

    folder = Path(run)
    if not folder.is_dir():
        findings = TrackingStore.open(tracking_uri).findings(run)
    elif (folder / HEALTH).exists():
        findings = read_health(folder / HEALTH)
    else:
        raise UserError(f"{folder} holds no {HEALTH}: pass a folder written by `bench train` or a study trial")
    if not findings:
        click.echo(f"{run}: no findings")
    for finding in findings:
        click.echo(f"step {finding.step:>6}  {finding.check:<22} {finding.summary()}")


@main.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="A run folder from `bench train`, or its checkpoint.pt.")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Instead of --checkpoint: a folder of images a generator made (elsewhere), scored as samples of "
                   "--dataset.")
@click.option("--dataset", default=None, help="The dataset --images are samples of (its real statistics).")
@click.option("--name", default=None, help="With --images and --study: record the scores in the study as this "
                                          "external entry (shown beside its variants, marked external).")
@click.option("--study", default=None, help="With --images and --name: the study to record them in; the images are "
                                           "scored as its trials are (dataset, extractor, samples, real samples).")
@click.option("--provenance", default="", help="Where the images come from (model, checkpoint, settings), kept "
                                               "with the external entry.")
@tracking_uri_option
@click.option("--features", default=None,
              help="Feature extractor: domain or inception [default: inception on a GPU; on a CPU, domain where "
                   "the dataset has a domain classifier].")
@click.option("--samples", default=None, type=int,
              help="Generated samples to score [default: 10000 from a checkpoint, every image of --images].")
@click.option("--real-samples", default=None, type=int,
              help="With --images and --dataset: the real test images the statistics come from [default: "
                   f"{REAL_SAMPLES}, all of a smaller split]; a checkpoint is scored as its run was, a study's "
                   "entry as its trials are.")
@device_option
@reports_user_errors
def eval_command(checkpoint, images, dataset, name, study, provenance, tracking_uri, features, samples, real_samples,
                 device) -> None:
    """Scores a trained generator, or a folder of its images: FID and KID (named by extractor) and the
    class-aware metrics. With --images, --name and --study, records them in the study as an external entry."""
    from bench.evaluation import check_entry_name, evaluate, evaluate_images, record_images, study_images

    if (checkpoint is None) == (images is None):
        raise UserError("give --checkpoint (a run of `bench train`) or --images (a folder of generated images)")
    if (name is None) != (study is None) or (name is not None and images is None):
        raise UserError("--name and --study go together, with --images: the external entry and the study to record "
                        "it in")
    if real_samples is not None and (images is None or study is not None):
        raise UserError("--real-samples goes with --images and --dataset: a checkpoint is scored against the real "
                        "images its run was, a study's entry against its trials'")
    if images is not None and study is not None:
        if features is not None or samples is not None:
            raise UserError("a study scores its entries as it scores its trials: leave out --features and --samples")
        from bench.tracking import TrackingStore

        check_entry_name(name)  # what can be refused is refused before the scoring
        store = TrackingStore.open(tracking_uri, create=True)
        scored, spec = study_images(images, study, dataset=dataset, device=device)
        run_id = record_images(scored, name, spec.name, spec.objective, provenance=provenance, tracking=store)
        click.echo(f"{name} recorded in study {spec.name} as an external entry (MLflow run {run_id}): "
                   f"{spec.objective} {scored.scores.get(spec.objective, float('nan')):.6g} on {scored.samples} images")
    elif images is not None:
        if dataset is None:
            raise UserError("--images needs --dataset: the dataset whose real images they are scored against")
        scored = evaluate_images(images, dataset, features=features, samples=samples, device=device,
                                 real_samples=REAL_SAMPLES if real_samples is None else real_samples)
        click.echo(f"{scored.folder} as samples of {scored.dataset}, {scored.samples} images, real statistics: "
                   f"{scored.real_split} split, {scored.real_images} images ({scored.real_features_source})")
    elif dataset is not None:
        raise UserError("--dataset goes with --images; a checkpoint is scored on the dataset it trained on")
    else:
        scored = evaluate(checkpoint, features=features, samples=10000 if samples is None else samples, device=device)
        click.echo(f"{scored.config.variant} on {scored.config.dataset}, step {scored.step}, {scored.samples} "
                   f"samples, real statistics: {scored.real_split} split, {scored.real_images} images "
                   f"({scored.real_features_source})")
    for key, value in scored.scores.items():
        click.echo(f"  {key:<16} {value:.6g}")


@main.command()
@click.option("--variants", "names", default="", help="Comma-separated variants [default: all].")
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--steps", default=40, show_default=True, help="Generator steps per timed repeat.")
@click.option("--repeats", default=3, show_default=True)
@device_option
@click.option("--scoring-samples", default=10000, show_default=True, help="Generated samples in the scoring timing.")
@click.option("--overhead-steps", default=200, show_default=True,
              help="Generator steps per repeat in the tracking and doctor overhead timings.")
@click.option("--time-to-quality", "quality_threshold", type=float, default=None, metavar="FID",
              help="Also measure each variant's training seconds until fid_domain < FID (minutes per variant).")
@click.option("--quality-seconds", default=300.0, show_default=True,
              help="Training seconds after which --time-to-quality gives up on a variant.")
@click.option("--parallel", "parallel", default="", metavar="K,K,...",
              help="Also time a small study with each of these --workers counts, e.g. 1,2 (minutes each).")
@click.option("--parallel-storage", default=None, metavar="URL",
              help="Optuna storage for --parallel, e.g. postgresql://USER@HOST/DB [default: a journal file].")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="A hyperparameter for the time to quality, set in every variant that has it (e.g. arch=mlp).")
@click.option("--compare-amp", is_flag=True,
              help="Time to quality with --amp on and off, plotting both curves.")
@click.option("--roofline", default=REFERENCE_VARIANT, show_default=True, metavar="VARIANT",
              help="The variant whose training step is set against the matmul peak, with the --set values it "
                   "has (e.g. --roofline gan --set arch=lucic).")
@click.option("--inception", is_flag=True,
              help="Also measure the Inception extractor, and precision/recall/density/coverage at its 2048 "
                   "features (slow on a CPU).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=RESULTS / "perf.json", show_default=True)
@reports_user_errors
def perf(names, dataset, steps, repeats, device, scoring_samples, overhead_steps, quality_threshold, quality_seconds,
         parallel, parallel_storage, settings, compare_amp, roofline, inception, output) -> None:
    """Measures training throughput (median images/s at batch 64) against a plain loop, scoring speed,
    tracking and doctor overheads and the hardware limit; optionally time to quality and parallel
    studies. Prints a table and writes JSON (and, with time to quality, a PNG of the curves beside it)."""
    from bench.perf import PerfPlan, perf_lines, run_perf
    from bench.registry import get_variant, variants

    chosen = [name.strip() for name in names.split(",") if name.strip()] or list(variants())
    keys = {setting.partition("=")[0] for setting in settings}
    hparams = {name: parse_settings(name, tuple(s for s in settings if s.partition("=")[0] in get_variant(name).hparams))
               for name in {*chosen, roofline}}
    unused = sorted(keys - {key for values in hparams.values() for key in values})
    if unused:
        raise UserError(f"--set {unused[0]}: none of {', '.join(chosen)} has it; see `bench list`")
    try:
        worker_counts = tuple(int(count) for count in parallel.split(",") if count.strip())
    except ValueError:
        raise UserError(f"--parallel expects worker counts like 1,2,3, got '{parallel}'") from None
    check_writable(output)
    report = run_perf(PerfPlan(tuple(chosen), dataset=dataset, steps=steps, repeats=repeats, device=device,
                               inception=inception, scoring_samples=scoring_samples, overhead_steps=overhead_steps,
                               quality_threshold=quality_threshold, quality_seconds=quality_seconds,
                               parallel=worker_counts, parallel_storage=parallel_storage, hparams=hparams,
                               compare_amp=compare_amp, roofline=roofline), output)
    for line in perf_lines(report):
        click.echo(line)
    click.echo(f"wrote {output}")


@main.group()
def features() -> None:
    """Feature extractors used for scoring."""


@features.command("train")
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--data-root", type=click.Path(), default=None, help="Where torchvision datasets live.")
@image_size_option
@click.option("--epochs", default=8, show_default=True)
@click.option("--seed", type=SEEDS, default=0, show_default=True)
@device_option
@reports_user_errors
def features_train(dataset, data_root, image_size, epochs, seed, device) -> None:
    """Trains the domain classifier for a labelled DATASET and writes its weights and card to
    results/classifiers/, where scoring finds them: fid_domain, kid_domain and the class-aware metrics."""
    from bench.devices import resolve_device
    from bench.classifier import save_domain_classifier, train_domain_classifier

    model, card = train_domain_classifier(resized(dataset, image_size), epochs=epochs, seed=seed, device=resolve_device(device),
                                          data_root=data_root, log=click.echo)
    path = save_domain_classifier(model, card)
    click.echo(f"test accuracy {card['test_accuracy']:.2%} in {card['train_seconds']:.0f} s; wrote {path}")


STOPPED_BY_SIGNAL = (128 + signal.SIGINT, 128 + signal.SIGTERM)


def entry() -> None:
    """The `bench` console script: :func:`main`, and after SIGINT or SIGTERM a prompt exit. By then every
    command has saved its work (checkpoint written, runs closed, trials queued to resume) and said so;
    the interpreter's teardown of torch, MLflow and their threads would take seconds more."""
    try:
        main()
    except SystemExit as exc:
        if exc.code not in STOPPED_BY_SIGNAL:
            raise
        from bench.processes import exit_promptly

        exit_promptly(exc.code)


if __name__ == "__main__":
    entry()
