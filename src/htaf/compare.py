r"""The experiment driver: variants × seeds × one training recipe → a table. ``htaf compare``,
``htaf reproduce <part>`` (a part is a :class:`CompareConfig`) and the CIFAR-10 runs all go
through :func:`compare`.

Every *variant* (an activation, its parameters, a depth, a point of a recipe grid — or another
model) is trained over several seeds with the same recipe by :func:`htaf.engine.train`, and
evaluated in **hard mode**: every hidden activation is the exact step, so the numbers are those
of the binary network that would be deployed.

* ``htaf`` — smooth HTAF during training (γ fixed, or annealed), evaluated hard; the
  *discretization gap* (smooth accuracy − hard accuracy) says how binary training ended;
* ``htaf_st`` and the baselines (``sigmoid``, ``atan``, ...) — straight-through: the forward pass is
  already the step; the backward pass is the surrogate's derivative;
* ``relu`` — the same architecture in full precision: the ceiling.

**Selection on validation, report on test.** ``scales`` sweeps each surrogate's own scale (its
first hyperparameter) and HTAF's α, β, γ one at a time; ``grid`` sweeps recipe fields
(``{"anneal_gamma": [None, (1, 30)]}``). Each *family* (an activation at a depth) is then reported
at its member with the best mean hard **validation** accuracy, and so is the best baseline; the
test split, evaluated once at the end of every run, only reports. HTAF against the best baseline
is the paired difference over seeds with a 95 % confidence interval (:mod:`htaf.stats`), and the
verdict (win / tie / loss) comes from that interval, not from the means.

Runs are independent processes of one thread each with ``jobs > 1`` (deterministic per run: the
numbers do not depend on ``jobs``). A comparison folder ``<out_dir>/<name>/`` holds ``runs.jsonl``
(one record per finished run, appended as it finishes), ``results.json``, ``report.md`` and PNG
plots; with ``resume`` a later call reuses the finished runs of the same recipe (a killed sweep
continues, a part can be split over calls by seed), with ``overwrite`` it starts afresh, and
without either an existing folder is an error.

>>> from htaf.compare import CompareConfig, compare
>>> result = compare(CompareConfig(recipe={"epochs": 5}, seeds=(0, 1, 2)))
>>> print(result.table())
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ._checks import check_fields, check_int, check_real
from .engine.config import TrainConfig

__all__ = ["CompareConfig", "Variant", "compare", "build_variants", "compare_recipe",
           "DEFAULT_ACTIVATIONS", "RECIPE", "ROLES"]

#: Default line-up: HTAF both ways, the common surrogates (a Gaussian-tailed one, two polynomial
#: tails, a compact one, the clipped STE) and the ReLU ceiling.
DEFAULT_ACTIVATIONS = ("htaf", "htaf_st", "sigmoid", "atan", "fast_sigmoid", "piecewise_quadratic",
                       "ste", "relu")
#: The default network of ``htaf compare``: 6 hidden Heaviside layers of 128 units.
MLP_DEFAULTS = {"depth": 6, "width": 128}
#: The recipe of ``htaf compare``, on top of :class:`TrainConfig`'s defaults. Smooth HTAF at fixed
#: γ: on the deep MLPs it already ends binary (docs/dhn.md); the CNNs of the parts anneal.
#: lr 1e-3 for 30 epochs, chosen on validation by least worst-case regret over two sweeps
#: (docs/results/compare-defaults: at depth 16 on Fashion-MNIST lr 1e-2 collapses HTAF-st, sigmoid
#: and atan, lr 1e-3 is best for every activation; on digits at depth 6 it costs ~1.5 points).
RECIPE = {"epochs": 30, "batch_size": 64, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0,
          "schedule": "onecycle", "anneal_gamma": None}
ROLES = ("htaf", "baseline", "ceiling")
#: Recipe fields a comparison sets per run (so neither the recipe nor a grid may).
_PER_RUN = {"seed", "name", "out_dir", "resume", "overwrite", "log", "stop_after", "model",
            "model_kwargs"}

# --------------------------------------------------------------- activation names (the resolver)
_GREEK = {"alpha": "α", "beta": "β", "gamma": "γ", "slope": "k", "clip": "clip"}


def resolve_activation(*args, **kwargs):
    """:func:`htaf.surrogates.resolve_activation`, imported on first use (the CLI builds its
    parser from this module without importing torch)."""
    from .surrogates import resolve_activation

    return resolve_activation(*args, **kwargs)


def _role(activation: str) -> str:
    return resolve_activation(activation).kind


def _scale_params(activation: str, params: dict | None = None) -> list[tuple[str, float]]:
    """The parameters a scale sweep multiplies (HTAF's α, β, γ; a baseline's first parameter),
    with their values under ``params`` (else the defaults)."""
    spec = resolve_activation(activation, params)
    if not spec.binary:
        return []
    values = spec.surrogate.hyperparameters()
    names = list(values) if spec.kind == "htaf" else list(values)[:1]
    return [(n, values[n]) for n in names if math.isfinite(values[n])]


# ------------------------------------------------------------------------------------ variants

def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        return ":".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "none" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _frozen(value):
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class Variant:
    """One line of a comparison. Either an ``activation`` of the recipe's model, with its
    parameters (``params``, sorted pairs), a ``depth`` (None: the model's own) and ``gamma_mult``
    (scales smooth HTAF's annealing range); or another ``model`` with ``model_kwargs``, a
    ``title`` and a ``role``. ``setting``: the recipe values of a grid point."""

    activation: str | None = None
    params: tuple[tuple[str, float], ...] = ()
    depth: int | None = None
    gamma_mult: float = 1.0
    setting: tuple[tuple[str, object], ...] = ()
    model: str | None = None
    model_kwargs: tuple[tuple[str, object], ...] = ()
    title: str | None = None
    role: str | None = None

    @property
    def kind(self) -> str:
        """``htaf``, ``baseline`` or ``ceiling``."""
        return self.role or _role(self.activation)

    @property
    def smooth(self) -> bool:
        """Trained smooth and evaluated hard (so its smooth→hard gap means something)."""
        return resolve_activation(self.activation).smooth if self.activation else self.kind == "htaf"

    @property
    def family(self) -> str:
        """The activation (or model title), without parameters: what selection chooses within."""
        return self.title or self.activation

    @property
    def choice(self) -> str:
        """What distinguishes this variant within its family: ``"α=1"``, ``""`` for the default."""
        parts = [f"{_GREEK.get(k, k)}={v:g}" for k, v in self.params]
        if self.gamma_mult != 1.0:
            parts.append(f"γ×{self.gamma_mult:g}")
        parts += [f"{k}={_show(v)}" for k, v in self.setting]
        return " ".join(parts)

    @property
    def name(self) -> str:
        """Family and choice, without the depth: ``"atan α=1"``."""
        return " ".join(p for p in (self.family, self.choice) if p)

    @property
    def label(self) -> str:
        return self.name if self.depth is None else f"{self.name} @ depth {self.depth}"

    @property
    def slug(self) -> str:
        """A folder name: ``"atan-alpha1-d12"``, ``"ICBM-HTAF-concepts-gamma-1-30"``."""
        s = self.name.replace("=", "").replace("×", "x")
        for k, v in _GREEK.items():
            s = s.replace(v, k)
        s = re.sub(r"[^A-Za-z0-9.]+", "-", s).strip("-")
        return s + ("" if self.depth is None else f"-d{self.depth}")

    def to_json(self) -> dict:
        return {"name": self.name, "family": self.family, "choice": self.choice,
                "activation": self.activation, "act_params": dict(self.params),
                "depth": self.depth, "gamma_mult": self.gamma_mult,
                "setting": dict(self.setting), "model": self.model,
                "model_kwargs": dict(self.model_kwargs), "title": self.title, "role": self.role,
                "kind": self.kind}


#: The key of ``act_params`` that carries a :attr:`Variant.gamma_mult` (a selected multiple of
#: smooth HTAF's annealing range) from a selection stage into the main one.
GAMMA_MULT = "gamma_mult"


def build_variants(activations: Sequence[str], depths: Sequence[int | None] = (None,),
                   scales: Sequence[float] = (), annealed: bool = False,
                   grid: dict | None = None, models: Sequence[dict] = (),
                   family: str | None = None, act_params: dict | None = None) -> list[Variant]:
    """All variants of a comparison, validated (unknown activations or parameters, and modes the
    model ``family`` cannot train, raise ``ValueError`` before anything trains). ``annealed``:
    smooth HTAF's γ follows a schedule, so its γ sweep scales the schedule (``gamma_mult``) instead
    of setting γ. ``grid``: recipe field → values, every combination a variant. ``models``: other
    models (see :class:`CompareConfig`). ``act_params``: activation → its hyperparameters (the
    scales multiply these; for annealed smooth HTAF also ``"gamma_mult"``, a multiple of its γ
    schedule)."""
    points = [tuple(zip(grid, combo)) for combo in itertools.product(*grid.values())] \
        if grid else [()]
    variants: list[Variant] = []
    for act in activations:
        base = dict((act_params or {}).get(act, {}))
        g_mult = float(base.pop(GAMMA_MULT, 1.0))   # a selected multiple of the γ schedule
        if g_mult != 1.0 and not (annealed and resolve_activation(act).smooth):
            raise ValueError(f"act_params[{act!r}][{GAMMA_MULT!r}] scales the annealing of smooth "
                             f"HTAF's γ; {act!r} has none here")
        resolve_activation(act, base, family=family)   # names the choices, or the family's modes
        sweeps: list[tuple[tuple[tuple[str, float], ...], float]] = [
            (tuple(sorted(base.items())), g_mult)]
        for param, value in _scale_params(act, base):
            for m in scales:
                if m == 1.0:
                    continue
                if annealed and resolve_activation(act).smooth and param == "gamma":
                    sweeps.append((tuple(sorted(base.items())), g_mult * m))   # the schedule's
                else:
                    sweeps.append((tuple(sorted({**base, param: value * m}.items())), g_mult))
        for (params, gamma_mult), setting, depth in itertools.product(sweeps, points, depths):
            resolve_activation(act, dict(params))   # e.g. a multiple that breaks a bound
            variants.append(Variant(act, params, depth, gamma_mult, setting))
    for spec in models:
        for setting in points:
            variants.append(Variant(
                model=spec["model"], title=spec.get("label", spec["model"]),
                model_kwargs=tuple(sorted((k, _frozen(v))
                                          for k, v in spec.get("model_kwargs", {}).items())),
                role=spec.get("role", "baseline"), setting=setting))
    seen: set[Variant] = set()
    return [v for v in variants if not (v in seen or seen.add(v))]


# --------------------------------------------------------------------------------- the config

def compare_recipe(model: str = "dhn_mlp", **overrides) -> TrainConfig:
    """A :class:`TrainConfig` with the defaults of ``htaf compare`` (:data:`RECIPE`; and
    :data:`MLP_DEFAULTS` for ``dhn_mlp``) under ``overrides``."""
    kw = {**RECIPE, "model_kwargs": dict(MLP_DEFAULTS) if model == "dhn_mlp" else {},
          "out_dir": None, "log": "none"}
    return TrainConfig(model=model, **{**kw, **overrides})


@dataclass
class CompareConfig:
    """A comparison: a training recipe, the line-up, the seeds and sweeps, and how to run it.
    The defaults are ``htaf compare`` with no arguments: a 6-hidden-layer Heaviside MLP on
    scikit-learn's digits, 8 activations × 3 seeds, about 70 s on 2 CPU cores."""

    recipe: TrainConfig | dict = field(default_factory=compare_recipe)
    """The model, data and training recipe shared by every run: a TrainConfig, or a dict of its
    fields on top of htaf compare's defaults. Each run sets its own seed and activation."""
    # ------------------------------------------------------------------------------ line-up
    activations: tuple[str, ...] = DEFAULT_ACTIVATIONS
    """Activations of the recipe's model: htaf (smooth), htaf_st, any surrogate name, relu."""
    models: tuple[dict, ...] = ()
    """Other models in the line-up: {"model", "model_kwargs", "label", "role"} with role htaf,
    baseline or ceiling."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every variant (runs with the same seed are paired in the statistics)."""
    depths: tuple[int, ...] | None = None
    """Depth sweep, e.g. 2 6 12 20; unset: the model's depth."""
    scales: tuple[float, ...] = ()
    """Also train each surrogate with its first parameter (α, slope, clip...) and HTAF with each
    of α, β, γ multiplied by M; each family is reported at its best on validation."""
    grid: dict = field(default_factory=dict)
    """Recipe fields to sweep, e.g. {"anneal_gamma": [None, [1, 30]]}; every combination is a
    variant, chosen on validation within its family like a scale."""
    act_params: dict = field(default_factory=dict)
    """Hyperparameters of an activation's variants, e.g. {"atan": {"alpha": 1.0}} (a scale an
    earlier sweep chose on validation); scales multiply these."""
    # ------------------------------------------------------------------------------ running
    jobs: int = 0
    """Runs trained at the same time, each in its own process; 0: one per CPU core (1 on CUDA)."""
    threads: int = 1
    """Intra-op threads of each run, whatever jobs is (so results do not depend on jobs)."""
    # ------------------------------------------------------------------------------- output
    out_dir: str | None = "runs"
    """Root of the comparison folder; none: write nothing."""
    name: str = "compare"
    """Comparison folder under out_dir."""
    keep_runs: bool = False
    """Also keep every run's folder (checkpoints, curves) under OUT/NAME/runs/."""
    resume: bool = False
    """Reuse the finished runs of an existing comparison folder (same recipe) and train the rest."""
    overwrite: bool = False
    """Replace an existing comparison folder."""

    def __post_init__(self):
        from .models import model_family

        if isinstance(self.recipe, dict):
            self.recipe = compare_recipe(**self.recipe)
        if not isinstance(self.recipe, TrainConfig):
            raise ValueError(f"recipe must be a TrainConfig or a dict, got {self.recipe!r}")
        self.activations = tuple(self.activations)
        if (self.activations == DEFAULT_ACTIVATIONS
                and model_family(self.recipe.model) in ("snn", "bnn")):
            # spikes and signs are exact in training: smooth HTAF is not a variant there
            self.activations = tuple(a for a in DEFAULT_ACTIVATIONS if a != "htaf")
        self.models = tuple(dict(m) for m in self.models)
        for m in self.models:
            if not isinstance(m.get("model"), str) or m.get("role", "baseline") not in ROLES:
                raise ValueError(f"each of models needs a 'model' name and a role in {ROLES}, "
                                 f"got {m!r}")
        if not self.activations and not self.models:
            raise ValueError("activations (or models) must name at least one variant")
        self.seeds = tuple(check_int("seed", s, low=0) for s in self.seeds)
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        if self.depths is not None:
            self.depths = tuple(check_int("depth", d, low=0) for d in self.depths)
            if not self.depths:
                raise ValueError("depths must list at least one depth (or be None)")
        self.scales = tuple(check_real("scale", s, low=0.0) for s in self.scales)
        self._check_grid()
        check_int("jobs", self.jobs, low=0)
        check_int("threads", self.threads, low=1)
        for key in ("activation", "act_params"):
            if key in self.recipe.model_kwargs:
                raise ValueError(f"the recipe's model_kwargs must not set {key!r}: each variant "
                                 f"sets it")
        if self.depths is not None and "depth" in self.recipe.model_kwargs:
            kw = {k: v for k, v in self.recipe.model_kwargs.items() if k != "depth"}
            self.recipe = dataclasses.replace(self.recipe, model_kwargs=kw)
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"name must be a plain folder name, got {self.name!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")
        for v in self.variants():     # every run's config, validated before anything trains
            self.train_config(v, self.seeds[0])

    def _check_grid(self) -> None:
        if not isinstance(self.grid, dict):
            raise ValueError(f"grid must map recipe fields to lists of values, got {self.grid!r}")
        known = {f.name for f in dataclasses.fields(TrainConfig)} - _PER_RUN
        for key, values in self.grid.items():
            if key not in known:
                raise ValueError(f"grid: {key!r} is not a recipe field; known: "
                                 f"{', '.join(sorted(known))}")
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"grid: {key} needs a list of values, got {values!r}")
        self.grid = {k: [_frozen(v) for v in vs] for k, vs in self.grid.items()}

    def annealed(self) -> bool:
        """Whether smooth HTAF's γ follows a schedule ("auto" counts as annealed until
        :func:`compare` resolves it for the model)."""
        return self.recipe.anneal_gamma is not None

    def variants(self) -> list[Variant]:
        from .models import model_family

        return build_variants(self.activations, self.depths or (None,), self.scales,
                              annealed=self.annealed(), grid=self.grid, models=self.models,
                              family=model_family(self.recipe.model), act_params=self.act_params)

    def train_config(self, variant: Variant, seed: int) -> TrainConfig:
        """The :class:`TrainConfig` of one run."""
        r = self.recipe
        model = variant.model or r.model
        model_kwargs = {**(r.model_kwargs if model == r.model else {}),
                        **dict(variant.model_kwargs)}
        if variant.activation is not None:
            model_kwargs["activation"] = variant.activation
        if variant.params:
            model_kwargs["act_params"] = dict(variant.params)
        if variant.depth is not None:
            model_kwargs["depth"] = variant.depth
        setting = dict(variant.setting)
        anneal = setting.pop("anneal_gamma", r.anneal_gamma)
        if variant.gamma_mult != 1.0 and isinstance(anneal, (tuple, list)):
            anneal = tuple(g * variant.gamma_mult for g in anneal)
        keep = self.keep_runs and self.out_dir is not None
        return dataclasses.replace(
            r, model=model, model_kwargs=model_kwargs, seed=seed, anneal_gamma=anneal,
            **setting, out_dir=str(self.folder() / "runs") if keep else None,
            name=f"{variant.slug}-s{seed}", resume=self.resume and keep, overwrite=False,
            log="none", stop_after=None)

    def folder(self) -> Path | None:
        return None if self.out_dir is None else Path(self.out_dir) / self.name

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["recipe"] = self.recipe.to_dict()
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> CompareConfig:
        """Build from a (JSON) dict: ``recipe`` may hold only the fields that differ from
        htaf compare's defaults; unknown keys are an error naming them."""
        d = check_fields("comparison", d, cls)
        recipe = dict(d.pop("recipe", {}))
        for key in ("anneal_gamma", "anneal_beta"):
            if isinstance(recipe.get(key), list):
                recipe[key] = tuple(recipe[key])
        tuples = {k: tuple(d[k]) for k in ("activations", "models", "seeds", "scales")
                  if d.get(k) is not None}
        if d.get("depths") is not None:
            tuples["depths"] = tuple(d["depths"])
        return cls(**{**d, **tuples, "recipe": compare_recipe(**recipe)})


# ------------------------------------------------------------------------------------ running

def compare(config: CompareConfig | None = None,
            progress: Callable[[str], None] | None = print):
    """Train every variant × seed of ``config`` (reusing finished runs with ``resume``); write
    the comparison folder (unless ``out_dir`` is None); return a
    :class:`~htaf.results.CompareResult`."""
    from .data import load_dataset
    from .results import CompareResult, code_version

    config = config or CompareConfig()
    say = progress or (lambda _msg: None)
    r = config.recipe
    dataset = load_dataset(r.data, cache_dir=r.data_cache, root=r.data_root,
                           val_fraction=r.val_fraction)
    config = _resolve_auto_annealing(config, dataset)
    variants = config.variants()
    plan = [(v, s, config.train_config(v, s)) for v in variants for s in config.seeds]
    folder = config.folder()
    done = _claim_folder(config, folder, plan, say)
    todo = [(v, s, tc) for v, s, tc in plan if _run_key(tc) not in done]
    jobs = _jobs(config, len(todo))
    say(f"htaf compare: {r.model} {json.dumps(r.model_kwargs)} on {dataset.name} "
        f"({dataset.sizes()}), {len(variants)} variant{'s' * (len(variants) > 1)} × "
        f"{len(config.seeds)} seed{'s' * (len(config.seeds) > 1)} = {len(plan)} runs of "
        f"{r.epochs} epochs" + (f"; {len(plan) - len(todo)} reused" if done else "")
        + (f"; {jobs} processes × {config.threads} thread" if jobs > 1 else ""))
    t_start = time.perf_counter()
    fresh = _execute(todo, config, dataset, jobs, folder, say)
    records = [done.get(_run_key(tc)) or fresh[_run_key(tc)] for _, _, tc in plan]
    for (v, _, _), rec in zip(plan, records):
        rec["variant"] = v
    result = CompareResult(config.to_dict(), records,
                           dataset=f"{dataset.name} ({dataset.sizes()})",
                           device=_device_name(r.device), wall=time.perf_counter() - t_start,
                           code=code_version())
    if folder is not None:
        result.write(folder)
    return result


def _resolve_auto_annealing(config: CompareConfig, dataset) -> CompareConfig:
    """Make ``anneal_gamma="auto"`` concrete for the recipe's model (so γ sweeps know whether
    they scale a schedule, and the records say what ran). A comparison of ``models`` only keeps
    "auto": each run resolves it for its own model."""
    if config.recipe.anneal_gamma != "auto" or not config.activations:
        return config
    from .engine.recipe import build_model, planned_steps, resolve_anneal_gamma

    tc = config.train_config(config.variants()[0], config.seeds[0])
    resolved = resolve_anneal_gamma("auto", build_model(tc, dataset), planned_steps(tc, dataset))
    return dataclasses.replace(config, recipe=dataclasses.replace(config.recipe,
                                                                  anneal_gamma=resolved))


def _run_key(tc: TrainConfig) -> str:
    """What identifies a run across calls: everything that determines its trajectory."""
    return json.dumps(tc.trajectory(), sort_keys=True)


def _claim_folder(config: CompareConfig, folder: Path | None, plan, say) -> dict[str, dict]:
    """Apply the folder rule (:func:`~htaf.engine.runlog.check_folder`); with ``resume``, return
    the finished runs of ``runs.jsonl`` that the plan contains (by trajectory)."""
    from .engine.runlog import check_folder, clear_folder, read_jsonl

    if folder is None:
        return {}
    error = check_folder(folder, resume=config.resume, overwrite=config.overwrite,
                         what="comparison")
    if error:
        raise FileExistsError(error)
    if config.overwrite:
        clear_folder(folder)
        return {}
    earlier = {_run_key_of(rec): rec for rec in read_jsonl(folder / "runs.jsonl")}
    wanted = {_run_key(tc) for _, _, tc in plan}
    other = len(set(earlier) - wanted)
    if other:
        say(f"note: {other} earlier run(s) in {folder / 'runs.jsonl'} have other settings and "
            f"are not part of this comparison (they stay in that file)")
    return {k: rec for k, rec in earlier.items() if k in wanted}


def _run_key_of(record: dict) -> str:
    return json.dumps(record["trajectory"], sort_keys=True)


def _jobs(config: CompareConfig, runs: int) -> int:
    if config.jobs:
        return max(1, min(config.jobs, runs))
    device = config.recipe.device
    if device.startswith("cuda"):
        return 1
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, runs))


def _execute(todo, config: CompareConfig, dataset, jobs: int, folder: Path | None,
             say) -> dict[str, dict]:
    """Train ``todo`` (in this process, or in ``jobs`` worker processes); each finished run's record
    is appended to ``runs.jsonl`` at once, so a killed comparison keeps what it finished."""
    from .engine.runlog import RunLog

    out: dict[str, dict] = {}
    t0 = time.perf_counter()
    width = len(str(len(todo)))
    log = RunLog(folder) if folder is not None else None

    def finished(item, rec):
        v, seed, tc = item
        rec.update(variant_json=v.to_json(), seed=seed, trajectory=tc.trajectory())
        out[_run_key(tc)] = rec
        if log is not None:
            log.append("runs.jsonl", rec)
        m, done = rec["metrics"], len(out)
        eta = (time.perf_counter() - t0) / done * (len(todo) - done)
        say(f"[{done:>{width}}/{len(todo)}] {v.label:<28} seed {seed}: hard val "
            f"{_pct(m.get('hard_val_acc'))}%, test {_pct(m.get('hard_test_acc'))}%  "
            f"({rec['time']:.1f} s, eta {eta:.0f} s)")

    if jobs <= 1:
        _DATASET.clear()
        _DATASET[_data_key(config.recipe)] = dataset
        try:
            for item in todo:
                finished(item, _train_one(item[2].to_dict(), config.threads))
        finally:
            _DATASET.clear()
        return out
    with ProcessPoolExecutor(jobs, mp_context=_process_context(), initializer=_exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_train_one, item[2].to_dict(), config.threads): item
                   for item in todo}
        try:
            for fut in as_completed(futures):
                finished(futures[fut], fut.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return out


def _process_context():
    """Workers start clean, never forked from this (possibly multithreaded) process: from a
    fork server that has imported the training code once (Linux, macOS; torch._dynamo too,
    which every torch optimizer imports on construction), else spawned. As with any
    multiprocessing, a script that calls :func:`compare` with ``jobs > 1`` needs an
    ``if __name__ == "__main__":`` guard."""
    import multiprocessing

    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["htaf.compare", "htaf.engine.loop", "htaf.data",
                                    "torch._dynamo"])
        return ctx
    return multiprocessing.get_context("spawn")


def _exit_with_parent(parent: int, poll: float = 1.0) -> None:
    """In a worker: end this process within ``poll`` seconds of the parent's end. A parent killed
    by a signal (``kill``, a scheduler's time limit) runs no clean-up, and its workers would
    otherwise train their current runs to the end, minutes of both cores, for nobody."""
    def watch():
        while True:
            time.sleep(poll)
            try:
                os.kill(parent, 0)
            except (ProcessLookupError, PermissionError):   # gone (or its number reused)
                os._exit(1)

    threading.Thread(target=watch, name="htaf-exit-with-parent", daemon=True).start()


_DATASET: dict = {}    # the dataset of this process's runs (a worker loads it once)


def _data_key(tc: TrainConfig) -> tuple:
    return tc.data, tc.data_cache, tc.data_root, tc.val_fraction


def _train_one(config: dict, threads: int) -> dict:
    """Train one run with ``threads`` intra-op threads (in a worker process, or here); return
    its record: final metrics (validation and test), curves, wall time, run folder."""
    import torch

    from .data import load_dataset
    from .engine.loop import train

    tc = TrainConfig.from_dict(config)
    key = _data_key(tc)
    if key not in _DATASET:
        _DATASET.clear()
        _DATASET[key] = load_dataset(tc.data, cache_dir=tc.data_cache, root=tc.data_root,
                                     val_fraction=tc.val_fraction)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        result = train(tc, dataset=_DATASET[key])
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    curve = ("epoch", "train_loss", "val_loss", "hard_val_loss", "val_acc", "hard_val_acc",
             "val_dead_units", "gamma")
    return {"metrics": result.metrics, "time": wall,
            "history": [{k: r.get(k) for k in curve} for r in result.history],
            "run_dir": str(result.run_dir) if result.run_dir else None}


def _pct(x, digits=1):
    return "—" if x is None else f"{100 * x:.{digits}f}"


def _device_name(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    from ._build import cpu_summary

    return f"CPU: {cpu_summary()}, {os.cpu_count()} cores"

