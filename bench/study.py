"""Study files: what a sweep searches, with which sampler and pruner, on which budget.

A study is a TOML file in ``studies/`` (or any path). Its search space is checked against the
variant's declared hyperparameters before anything trains, so a typo or an out-of-range bound
fails in a second with the file, the key and the fix, not after an hour of trials.

A study with ``[arms]`` is an ablation instead of a search: each arm is a fixed set of
hyperparameters (one of them ``baseline``), trained once per seed ``0 .. seeds-1`` (the same
seeds for every arm, so that arms compare pairwise), every trial to the full budget.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from bench.config import BUDGET_KEYS, Budget
from bench.data import check_dataset_name, with_subset
from bench.errors import ConfigError
from bench.inception import CLASSIFIER_ENV, CLASSIFIER_FILES, classifier_weights_path, hub_checkpoints
from bench.readers import read_bytes
from bench.registry import TIPS, HParam, HParamValue, Variant, variants
from bench.scores import EXTRACTORS, SCORES, extractor_of, higher_is_better, is_score, metric_names, score_of
from bench.classifier import default_extractor, no_classifier, weights_path


def _shipped_studies() -> Path:
    """The folder of the study files ganbench ships: bench/studies in an installed wheel (pyproject.toml
    maps the repository's studies/ there), else the repository's studies/ beside bench/ (a checkout, or an
    editable install: setuptools' editable finder does not import a mapped folder without __init__.py)."""
    installed = Path(__file__).resolve().parent / "studies"
    return installed if installed.is_dir() else installed.parent.parent / "studies"


STUDIES_DIR = _shipped_studies()
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
STUDY_BUDGET = Budget(eval_every=500)
"""A study's budget where its file is silent: trials are scored every 500 steps for the pruner."""
TOP_LEVEL_KEYS = {"description", "variant", "dataset", "subset", "objective", "trials", "sampler", "pruner", "budget",
                  "space", "space_if_present", "seeds", "arms"}
BASELINE = "baseline"
"""The arm every other arm of an ablation is compared with."""


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: a numeric range (optionally on a log scale) or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[HParamValue, ...] = ()

    def suggest(self, trial: optuna.Trial, spec: HParam) -> HParamValue:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(spec.default, int):
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler calls ``study.stop()`` after the grid's last trial, which raises
    outside ``study.optimize``; the runner asks and tells, and stops at the grid's size itself."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


@dataclass(frozen=True)
class Arm:
    """One setting of an ablation: hyperparameters fixed to these values, the rest at their defaults."""

    name: str
    hparams: dict[str, HParamValue]


@dataclass(frozen=True)
class StudySpec:
    name: str
    path: Path
    variant: str | None = None
    """The variant(s) `bench run` uses when --variant is not given: a name, several separated by commas, or 'all'."""
    dataset: str = "fashion-mnist"
    objective: str = "fid_domain"
    trials: int = 20
    sampler: str = "tpe"
    pruner: str = "median"
    budget: Budget = field(default_factory=lambda: dataclasses.replace(STUDY_BUDGET))
    space: tuple[Dimension, ...] = ()
    space_if_present: tuple[Dimension, ...] = ()
    """Searched only for variants that have the hyperparameter (a study spanning variants)."""
    arms: tuple[Arm, ...] = ()
    seeds: int = 1
    description: str = ""

    @property
    def is_ablation(self) -> bool:
        return bool(self.arms)

    @property
    def features(self) -> str:
        """The extractor of the evaluations during training: the objective's, or (class-aware
        objectives, and an objective read from a final scoring) the cheap domain one where the
        dataset has a domain classifier."""
        extractor = extractor_of(self.objective)
        return extractor if extractor and not self.budget.final_samples else default_extractor(self.dataset)

    @property
    def direction(self) -> str:
        return "maximize" if higher_is_better(self.objective) else "minimize"

    def definition(self) -> dict[str, Any]:
        """What makes trials of this study comparable, as plain JSON values: its dataset, objective, budget,
        search space and arms. Another file of the same name must define the same study (the runner checks)."""
        return json.loads(json.dumps({
            "dataset": self.dataset, "objective": self.objective, "budget": dataclasses.asdict(self.budget),
            "space": [dataclasses.asdict(dim) for dim in self.space],
            "space_if_present": [dataclasses.asdict(dim) for dim in self.space_if_present],
            "arms": {arm.name: arm.hparams for arm in self.arms}, "seeds": self.seeds}))

    def make_pruner(self) -> optuna.pruners.BasePruner:
        if self.pruner == "median":
            # A GAN's first evaluation is too early to judge it by: the pruner may act from the second.
            return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=self.budget.eval_every + 1)
        if self.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=self.budget.eval_every, max_resource=self.budget.steps)
        return optuna.pruners.NopPruner()

    def for_variant(self, variant: type[Variant], trials: int | None = None) -> VariantStudy:
        """This study resolved for ``variant``, checked once: what its trials search (or which arms
        they run) and how many there are (``trials``, default the file's; at most the grid's size).
        Raises ConfigError naming the file and key when the study asks for what the variant cannot take."""
        dimensions = tuple(self._dimensions(variant))
        arms, skipped = self._arms(variant)
        trials = self.trials if trials is None else trials
        if self.is_ablation:
            trials = min(trials, len(arms) * self.seeds)
        elif self.sampler == "grid":
            trials = min(trials, len(list(itertools.product(*(dim.choices for dim in dimensions)))))
        check_trials(trials, "trials")
        self._check_objective(variant)
        return VariantStudy(self, variant, dimensions, arms, skipped, trials)

    def _check_objective(self, variant: type[Variant]) -> None:
        """The objective is one that ``variant``'s trials record: label accuracy needs a conditional
        generator, code accuracy a categorical latent code."""
        needs = score_of(self.objective).needs
        lacks = {"labels": not variant.conditional,
                 "codes": variant.categorical_code is Variant.categorical_code}.get(needs, False)
        if lacks:
            what = "a conditional generator (labels)" if needs == "labels" else "a categorical latent code"
            raise ConfigError(f"{self.path}: objective '{self.objective}' needs {what}, and variant '{variant.name}' "
                              "has none; choose another objective (e.g. fid_domain) or another variant")

    def _dimensions(self, variant: type[Variant]) -> list[Dimension]:
        dims = list(self.space) + [dim for dim in self.space_if_present if dim.name in variant.hparams]
        for dim in dims:
            where = f"{self.path}: [space] {dim.name}"
            try:
                spec = variant.hparam(dim.name)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}; remove the key, move it to [space_if_present], "
                                  "or run another variant") from None
            for bound in (dim.choices or (dim.low, dim.high)):
                try:
                    spec.check(dim.name, bound)
                except ConfigError as exc:
                    raise ConfigError(f"{where}: {exc} for variant '{variant.name}'; narrow the range") from None
            if not dim.choices and isinstance(spec.default, str):
                raise ConfigError(f"{where}: '{dim.name}' takes choices, not a range; write "
                                  f"{dim.name} = {{ choices = [...] }}")
        return dims

    def _arms(self, variant: type[Variant]) -> tuple[tuple[Arm, ...], dict[str, str]]:
        """(the arms ``variant`` can run, {arm: why not} for the others: they set a tip or a
        hyperparameter of other variants). A value out of range, or a key no variant knows, is
        a ConfigError naming the file and the arm."""
        known = set(TIPS).union(*(cls.hparams for cls in variants().values()))
        runnable, skipped = [], {}
        for arm in self.arms:
            for key, value in arm.hparams.items():
                try:
                    variant.hparam(key).check(key, value)
                except ConfigError as exc:
                    if key in variant.hparams or key not in known:
                        raise ConfigError(f"{self.path}: [arms] {arm.name}: {exc}") from None
                    skipped[arm.name] = str(exc)
                    break
            else:
                runnable.append(arm)
        if BASELINE in skipped:
            raise ConfigError(f"{self.path}: [arms] {BASELINE} cannot run on variant '{variant.name}' "
                              f"({skipped[BASELINE]}), and every arm is compared with it; give it settings "
                              f"every variant of the study takes (usually none: {BASELINE} = {{}})")
        return tuple(runnable), skipped


@dataclass(frozen=True)
class VariantStudy:
    """A study file resolved for one variant (StudySpec.for_variant): what the runner works from."""

    spec: StudySpec
    variant: type[Variant]
    dimensions: tuple[Dimension, ...]
    """The hyperparameters searched, each checked against the variant's valid range."""
    arms: tuple[Arm, ...]
    """An ablation's arms that the variant can run."""
    skipped_arms: dict[str, str]
    """An ablation's other arms, with the reason each cannot run."""
    trials: int

    @property
    def name(self) -> str:
        """The Optuna study's name: one per study file x variant x dataset."""
        return f"{self.spec.name}:{self.variant.name}:{self.spec.dataset}"

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        if self.spec.is_ablation:
            return AskTellGridSampler({"arm": [arm.name for arm in self.arms], "seed": list(range(self.spec.seeds))},
                                      seed=seed)
        if self.spec.sampler == "grid":
            return AskTellGridSampler({dim.name: list(dim.choices) for dim in self.dimensions}, seed=seed)
        if self.spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed)

    def suggest(self, trial: optuna.Trial) -> tuple[dict[str, HParamValue], int | None]:
        """(hyperparameters, seed index) for ``trial``: searched values, or in an ablation its
        arm's values and which of the ``seeds`` it trains with (None: the trial's own seed)."""
        if not self.spec.is_ablation:
            return {dim.name: dim.suggest(trial, self.variant.hparams[dim.name]) for dim in self.dimensions}, None
        arms = {arm.name: arm for arm in self.arms}
        arm = trial.suggest_categorical("arm", list(arms))
        return dict(arms[arm].hparams), trial.suggest_categorical("seed", list(range(self.spec.seeds)))


def check_trials(trials: int, what: str) -> None:
    if not 1 <= trials <= MAX_TRIALS:
        raise ConfigError(f"{what} must be from 1 to {MAX_TRIALS:,}, got {trials}: each trial is a row in the "
                          "Optuna storage and a run in MLflow that every later ask and comparison reads")


def available_studies() -> list[str]:
    return sorted(path.stem for path in STUDIES_DIR.glob("*.toml"))


def load_study(name_or_path: str | Path) -> StudySpec:
    """Reads ``studies/NAME.toml`` or a path to a TOML file and checks its shape."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = STUDIES_DIR / f"{name_or_path}.toml"
    try:
        missing = not path.exists()
    except OSError as exc:  # a name too long for the file system
        raise ConfigError(f"no study '{str(name_or_path)[:80]}...': {exc.strerror}; a study's name is its file's "
                          f"name, at most {MAX_NAME} characters") from None
    if missing:
        raise ConfigError(f"no study '{name_or_path}': {path} does not exist; available: "
                          f"{', '.join(available_studies())} (or pass a path to a .toml file)")
    data = read_bytes(path, "the study file", "pass a study .toml file (they are a few kB)", limit=MAX_STUDY_BYTES)
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nested too deep to read; a study file nests two levels") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                          "TOML files must be UTF-8: save it as UTF-8") from None
    unknown = sorted(set(raw) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}'; valid keys: {', '.join(sorted(TOP_LEVEL_KEYS))}")
    budget = _table(path, raw, "budget")
    unknown = sorted(set(budget) - set(BUDGET_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key 'budget.{unknown[0]}'; valid: {', '.join(BUDGET_KEYS)}")
    arms = raw.get("arms", {})
    spec = StudySpec(
        name=path.stem, path=path,
        description=_typed(path, raw, "description", str, ""),
        variant=_typed(path, raw, "variant", str, None) if "variant" in raw else None,
        dataset=_subset(path, _typed(path, raw, "dataset", str, "fashion-mnist"), raw),
        objective=_typed(path, raw, "objective", str, "fid_domain"),
        trials=_typed(path, raw, "trials", int, 20),
        sampler=_typed(path, raw, "sampler", str, "tpe"),
        pruner=_typed(path, raw, "pruner", str, "median"),
        budget=Budget(**{key: _typed(path, budget, key, int, getattr(STUDY_BUDGET, key), "budget.")
                         for key in BUDGET_KEYS}),
        space=_dimensions(path, _table(path, raw, "space"), "space"),
        space_if_present=_dimensions(path, _table(path, raw, "space_if_present"), "space_if_present"),
        arms=_arms(path, arms),
        seeds=_typed(path, raw, "seeds", int, 1),
    )
    if not spec.is_ablation and "seeds" in raw:
        raise ConfigError(f"{path}: 'seeds' applies to a study with arms in [arms] (each arm once per seed); a search "
                          "gives each trial a seed of its own: remove the key")
    if spec.is_ablation:
        _check_ablation(spec, raw)
        spec = dataclasses.replace(spec, trials=len(spec.arms) * spec.seeds, sampler="grid", pruner="none")
    _check(spec)
    return spec


MAX_STUDY_BYTES = 1_000_000
"""A study file is a few kB; a bigger one is some other file, refused before it is read."""
MAX_NAME = 100
"""The longest study name (its file's name): it names the study's folders, its Optuna studies (with the
variant and dataset) and its MLflow experiment, and file systems allow 255 bytes a name."""
MAX_TRIALS = 100_000
"""The most trials a study may ask for: each is a row in the Optuna storage and a run in MLflow that every
ask, leaderboard and comparison reads back; at a few minutes a trial, more would run for a year."""
CHOICE_TYPES = (str, int, float, bool)
"""What a categorical dimension's choices may be (Optuna stores them as JSON scalars)."""


def _typed(path: Path, table: dict, key: str, kind: type, default: Any, prefix: str = "") -> Any:
    value = table.get(key, default)
    if not isinstance(value, kind) or isinstance(value, bool):
        kind_name = {int: "an integer", str: "a string", float: "a number"}.get(kind, kind.__name__)
        raise ConfigError(f"{path}: '{prefix}{key}' must be {kind_name}, got {value!r}")
    return value


def _table(path: Path, raw: dict, key: str) -> dict:
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: '{key}' must be a table ([{key}] with its entries below it), got {table!r:.40}")
    return table


def _dimensions(path: Path, table: dict, section: str) -> tuple[Dimension, ...]:
    dims = []
    for name, entry in table.items():
        where = f"{path}: [{section}] {name}"
        if not isinstance(entry, dict) or not ({"choices"} <= set(entry) or {"low", "high"} <= set(entry)):
            raise ConfigError(f"{where}: write either {name} = {{ low = ..., high = ..., log = true }} "
                              f"or {name} = {{ choices = [...] }}")
        extra = sorted(set(entry) - {"low", "high", "log", "choices"})
        if extra:
            raise ConfigError(f"{where}: unknown key '{extra[0]}'; valid: low, high, log, choices")
        if "choices" in entry:
            choices = entry["choices"]
            if not isinstance(choices, list) or not choices or not all(isinstance(c, CHOICE_TYPES) for c in choices):
                raise ConfigError(f"{where}: choices must be a non-empty list of strings, numbers or booleans")
            dims.append(Dimension(name, choices=tuple(choices)))
            continue
        low, high = entry["low"], entry["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise ConfigError(f"{where}: low and high must be numbers with low < high, got {low!r}, {high!r}")
        log = entry.get("log", False)
        if not isinstance(log, bool):  # a string "false" would be truthy
            raise ConfigError(f"{where}: log must be true or false, got {log!r:.40}")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log scale needs low > 0, got {low!r}")
        dims.append(Dimension(name, float(low), float(high), log))
    return tuple(dims)


def _subset(path: Path, dataset: str, raw: dict) -> str:
    """The study's dataset, restricted to ``subset = N`` training images where the file says so (NAME[N])."""
    if "subset" not in raw:
        return dataset
    try:
        return with_subset(dataset, _typed(path, raw, "subset", int, None))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _arms(path: Path, table: Any) -> tuple[Arm, ...]:
    if not isinstance(table, dict) or not all(isinstance(entry, dict) for entry in table.values()):
        raise ConfigError(f"{path}: [arms] must map each arm's name to its settings, e.g. "
                          "baseline = {} and smoothed = { label_smoothing = 0.1 }")
    return tuple(Arm(name, dict(entry)) for name, entry in table.items())


def _check_ablation(spec: StudySpec, raw: dict) -> None:
    """An ablation trains every arm with every seed to the full budget: no search, no pruning."""
    if BASELINE not in {arm.name for arm in spec.arms}:
        raise ConfigError(f"{spec.path}: [arms] needs an arm named '{BASELINE}' (e.g. {BASELINE} = {{}}) "
                          "for the others to be compared with")
    if spec.space or spec.space_if_present:
        raise ConfigError(f"{spec.path}: a study with [arms] compares fixed settings; move what [space] "
                          "searches into the arms, or drop [arms]")
    conflicting = sorted({"trials", "sampler", "pruner"} & set(raw))
    if conflicting:
        raise ConfigError(f"{spec.path}: '{conflicting[0]}' does not apply to a study with [arms]: it runs "
                          "every arm once per seed to the full budget (pruning would bias the comparison); "
                          "remove the key")
    if spec.seeds < 2:
        raise ConfigError(f"{spec.path}: an ablation needs seeds >= 2 to put a confidence interval on each "
                          f"arm's effect, got {spec.seeds}")


def _check(spec: StudySpec) -> None:
    if spec.sampler not in SAMPLERS:
        raise ConfigError(f"{spec.path}: sampler '{spec.sampler}' is unknown; choose one of: {', '.join(SAMPLERS)}")
    if spec.pruner not in PRUNERS:
        raise ConfigError(f"{spec.path}: pruner '{spec.pruner}' is unknown; choose one of: {', '.join(PRUNERS)}")
    if not is_score(spec.objective):
        score = spec.objective.split("_")[0]
        if any(s.per_extractor and s.name == score for s in SCORES):
            raise ConfigError(f"{spec.path}: objective '{spec.objective}' names no extractor; use "
                              + " or ".join(f"{score}_{extractor}" for extractor in EXTRACTORS))
        raise ConfigError(f"{spec.path}: objective '{spec.objective}' is not a score; use one of: "
                          + ", ".join(metric_names()))
    try:
        check_dataset_name(spec.dataset)
    except ConfigError as exc:
        raise ConfigError(f"{spec.path}: {exc}") from None
    budget = spec.budget
    needs = score_of(spec.objective).needs
    if needs == "logits" and (not budget.final_samples or classifier_weights_path() is None):
        raise ConfigError(f"{spec.path}: objective {spec.objective} comes from the final Inception scoring, with "
                          f"Inception's classification weights: set final_samples in [budget] and put "
                          f"{CLASSIFIER_FILES[0]} in {hub_checkpoints()} (or name it in "
                          f"{CLASSIFIER_ENV}); or rank by fid_inception")
    if (needs in ("classifier", "labels", "codes") or spec.objective.endswith("_domain")) \
            and weights_path(spec.dataset) is None:
        raise ConfigError(f"{spec.path}: {no_classifier(spec.dataset, f'objective {spec.objective}')}")
    check_trials(spec.trials, f"{spec.path}: trials")
    if ":" in spec.name:
        raise ConfigError(f"{spec.path}: a study's name (its file's name) may not hold ':', which separates the "
                          "study, variant and dataset in its Optuna studies' names; rename the file")
    if len(spec.name) > MAX_NAME:
        raise ConfigError(f"{spec.path}: the study's name (its file's name) has {len(spec.name)} characters, over "
                          f"{MAX_NAME}; give the file a shorter name")
    try:
        budget.validate()
    except ConfigError as exc:
        raise ConfigError(f"{spec.path}: budget.{exc}") from None
    if not (budget.eval_every or budget.final_samples) or (
            not (budget.epochs or budget.real_batches) and budget.eval_every > budget.steps):
        raise ConfigError(f"{spec.path}: budget.eval_every must be in [1, budget.steps={budget.steps}] "
                          "(the objective is read from the evaluations), or 0 with budget.final_samples set")
    if (budget.epochs or budget.real_batches) and spec.pruner == "hyperband":
        raise ConfigError(f"{spec.path}: the hyperband pruner needs budget.steps, but budget.epochs or "
                          "budget.real_batches sets each variant's steps; use pruner = \"median\" or \"none\"")
    if spec.sampler == "grid" and any(not dim.choices for dim in spec.space + spec.space_if_present):
        raise ConfigError(f"{spec.path}: the grid sampler needs every [space] entry as choices = [...]")
