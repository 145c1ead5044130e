"""``python -m kaft.sweep.plan`` — what each job of a run or sweep will need and do, before anything is submitted.

It takes kaft.run's arguments (``-m`` and the same overrides), composes every job's config with Hydra's own config
loader and basic-sweeper expansion (nothing is launched, no run directory is created), and prints per job: parameter
and LoRA counts from the model built on the ``meta`` device, GPU memory per stage against ``plan.gpu_memory_gb``,
FLOP-based times, whether the model and data sets load here (kaft/hub.py), which stages the cache already holds
(kaft.stages' own stage functions over a cache that never builds) and whether the job already finished.

Plan settings are given as ``plan.KEY=VALUE`` (not Hydra overrides, so they do not change job directories):
``gpu_memory_gb`` (80), ``peak_tflops`` (989, H100 dense bf16), ``mfu`` (0.35), ``probe_items`` (32), ``gpus`` (8:
the per-GPU training memory and time under DDP and FSDP for 1, 2, 4 ... gpus, :mod:`kaft.sweep.plan_parallel`).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kaft import fields as kfields
from kaft import job as job_mod
from kaft import losses, modeling, trainset
from kaft import stages as S
from kaft import strategy as strategy_mod
from kaft.cache import Cache, Hit
from kaft.errors import KaftError
from kaft.items import is_freeform
from kaft.sweep import plan_estimate as est
from kaft.sweep import plan_parallel as par
from kaft.sweep import preflight
from kaft.sweep.status import hydra_errors_as_one_line

CONF = Path(__file__).resolve().parents[2] / "conf"


@dataclass(frozen=True)
class Settings:
    """``plan.*`` settings: the GPU a job gets and how fast it runs (GB = GiB)."""

    gpu_memory_gb: float = kfields.number(
        80.0, 0.0, lo_open=True, help="an A100/H100 80 GB; 141 for an H200, 40 for an A100 40 GB"
    )
    peak_tflops: float = kfields.number(989.0, 0.0, lo_open=True, help="dense bf16 peak (A100: 312, H200: 989)")
    mfu: float = kfields.number(0.35, 0.0, 1.0, lo_open=True, help="model FLOP utilisation assumed for every stage")
    probe_items: int = kfields.integer(32, 1, help="items whose prompts are tokenised to measure prompt lengths")
    gpus: int = kfields.integer(8, 1, help="GPUs per job the DDP / FSDP rows go up to (kaft/sweep/plan_parallel.py)")

    @classmethod
    def parse(cls, args: list[str]) -> Settings:
        known, out = {f.name: f.type for f in fields(cls)}, {}
        for a in args:
            key, _, value = a[len("plan.") :].partition("=")
            if key not in known:
                raise est.PlanError(str(kfields.unknown_key_error("plan", key, known)))
            try:
                out[key] = int(value) if known[key] == "int" else float(value)
            except ValueError:
                raise est.PlanError(f"plan.{key} must be a number, got {value!r}") from None
        return kfields.parse(cls, out, "plan", est.PlanError)


# ----------------------------------------------------------------------------------------------- Hydra jobs
def compose_jobs(overrides: list[str], multirun: bool) -> list[tuple[int, list[str], DictConfig]]:
    """Every job's full config (``hydra`` node included, run dir resolvable), as ``kaft.run`` would compose it.
    Sweeps expand as Hydra's basic sweeper does (``hydra.sweeper.params`` of a sweep file plus ``a=1,2`` overrides)."""
    # lazy: Hydra is slow to import; only the Hydra-facing paths need it
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    GlobalHydra.instance().clear()
    _MEMO.clear()  # a new plan: the hub cache, data and model may have changed since the last one in this process
    with initialize_config_dir(str(CONF), version_base="1.3", job_name="run"):
        loader = GlobalHydra.instance().config_loader()
        if not multirun:
            return [(0, list(overrides), loader.load_configuration("config", overrides, run_mode=RunMode.RUN))]
        master = loader.load_configuration("config", overrides, run_mode=RunMode.MULTIRUN)
        jobs = preflight.expand(loader, master)
        if not jobs:
            raise est.PlanError(
                f"kaft.sweep.plan expands Hydra's basic sweeper only, not {master.hydra.sweeper._target_}"
            )
        return jobs


task_config, run_dir = preflight.task_config, preflight.run_dir


# ----------------------------------------------------------------------------------------------- the cache
class Missing(Exception):
    """An artifact the cache does not hold; ``key`` is the one kaft.run would build it under."""

    def __init__(self, stage: str, key: str):
        super().__init__(f"{stage}/{key}")
        self.stage, self.key = stage, key


class DryCache(Cache):
    """kaft.run's cache that never builds: a missing artifact raises :class:`Missing` with the key kaft.run would
    use. Partition (a cheap, pure function of detection) is built in a temp dir outside the cache, so the keys of
    training and evaluation after it can still be found."""

    def __init__(self, root: str):
        super().__init__(root)
        self._tmp = tempfile.TemporaryDirectory(prefix="kaft-plan-")

    def get_or_create(self, stage, key, build, meta=None) -> Hit:
        if self._valid(stage, key):
            return Hit(self.path(stage, key), True, 0.0)
        if stage != "partition":
            raise Missing(stage, key)
        tmp = Path(self._tmp.name) / key
        tmp.mkdir(exist_ok=True)
        build(tmp)
        return Hit(tmp, False, 0.0)

    def close(self) -> None:
        self._tmp.cleanup()


class _NoModel:
    """Stands in for kaft.stages.LazyModel: the plan never loads weights, and a stage that tried would fail loudly."""

    path = None

    def get(self):
        raise RuntimeError("kaft.sweep.plan loads no model")


def cache_walk(cfg: DictConfig, train: list, evals: dict, fps: dict, model_id: str) -> dict[str, str]:
    """Each stage kaft.run would reach: ``cached``, ``compute`` or ``after <stage>`` (its key needs that stage's
    output first) — found with kaft.stages' own functions, so the keys are the ones the job will use."""
    cache, st = DryCache(cfg.cache_dir), {}
    ctx = S.StageContext(cfg, cache, _NoModel(), model_id, fps)
    try:
        try:
            det = S.stage_detect(ctx, train)
            st["detect"] = "cached"
            st.update(_after_detect(ctx, train, det.value, det.key, evals))
        except Missing:
            st.update(detect="compute", partition="after detect", train="after detect", evaluate="after train")
        if cfg.evaluation.get("base", True) or not strategy_mod.trains(S.plain(cfg.strategy)):
            try:
                S.stage_evaluate(ctx, ctx.model.get, evals, ("base", model_id), Path("."))
                st["evaluate_base"] = "cached"
            except Missing:
                st["evaluate_base"] = "compute"
    finally:
        cache.close()
    return st


def _after_detect(ctx: S.StageContext, train: list, records: list[dict], dkey: str, evals: dict) -> dict[str, str]:
    cfg, cache, p, st = ctx.cfg, ctx.cache, S.plain, {}
    train = S.training_items(cfg, train, records)
    k = int(cfg.partition.k)
    st["partition"] = "cached" if cache.has("partition", S.partition_key(dkey, k, cfg.seed)) else "compute"
    subsets, names = S.stage_partition(ctx, records, dkey).value
    try:
        if strategy_mod.needs_greedy(p(cfg.strategy)):
            greedy = S.stage_greedy(ctx, train, records)
            records = greedy.value
            if greedy.cache_hit is not None:
                st["greedy"] = "cached"
        weights = losses.sample_weights(p(cfg.loss), subsets, [r["score"] for r in records], k)
        sel = strategy_mod.select(p(cfg.strategy), train, records, subsets, names, weights, int(cfg.seed))
        if not sel.train:
            return {**st, "train": "none (strategy)", "evaluate": "the base model's"}
        pairs = sel.records if losses.is_pairwise(p(cfg.loss)) else None
        sampling = losses.sma_sampling(p(cfg.loss), is_freeform(sel.items))
        if sampling is not None:
            pairs = S.stage_dpo_samples(ctx, sel.items, sampling).value
            st["dpo_samples"] = "cached"
    except Missing as m:
        return {
            **st,
            m.stage if m.stage != "detect" else "greedy": "compute",
            "train": f"after {m.stage}",
            "evaluate": "after train",
        }
    try:
        tkey = S.stage_train(ctx, trainset.contextualize(cfg, sel.items), sel.weights, pairs).key  # what _train keys
        st["train"] = "cached"
    except Missing as m:
        st["train"], tkey = "compute", m.key
    try:
        S.stage_evaluate(ctx, ctx.model.get, evals, ("tuned", tkey), Path("."))
        st["evaluate"] = "cached"
    except Missing:
        st["evaluate"] = "compute"
    return st


# ----------------------------------------------------------------------------------------------- one job
def loadable(cfg: DictConfig) -> tuple[str | None, list[str]]:
    """(model identity for the cache, or None; problems): the model through kaft.modeling's checks (kaft/hub.py for
    hub ids: local cache, gated, revision, disk); a model that its source builds on first use (the testbed's) is
    not built here: its identity is enough to look its artifacts up."""
    mcfg = S.plain(cfg.model)
    try:
        return modeling.resolve(mcfg, cfg.cache_dir, S.plain(cfg), build=False)[1], []
    except modeling.ModelError as e:
        return None, [f"model: {e}"]


_MEMO: dict[str, Any] = {}


def memo(key: Any, fn):
    """Jobs of a sweep share models, data and tokenizers: compute each once."""
    k = json.dumps(key, sort_keys=True, default=str)
    if k not in _MEMO:
        try:
            _MEMO[k] = (fn(), None)
        except Exception as e:  # noqa: BLE001 - re-raised for every job that needs it
            _MEMO[k] = (None, e)
    value, err = _MEMO[k]
    if err is not None:
        raise err
    return value


def load_data(cfg: DictConfig) -> tuple[list | None, dict | None, dict | None, list[str]]:
    key = [S.plain(cfg.dataset), S.plain(cfg.testbed), cfg.detection.name]
    try:
        train, evals, fps = memo(["data", key], lambda: S.stage_data(cfg, None))
    except KaftError as e:
        return None, None, None, [f"data: {e}"]
    try:
        S.validate(cfg, len(train))
    except KaftError as e:
        return train, evals, fps, [f"config: {e}"]
    return train, evals, fps, []


def plan_job(num: int, overrides: list[str], cfg: DictConfig, multirun: bool, s: Settings) -> dict:
    """Everything the plan says about one job (see :func:`render`)."""
    plain = S.plain
    rdir = run_dir(cfg, multirun)
    config_problem, differs, _ = preflight.job_problems(cfg, multirun)  # kaft.run's own preflight of the job
    cfg = task_config(cfg)
    mcfg, out = plain(cfg.model), {"num": num, "overrides": overrides, "run_dir": str(rdir)}
    out["finished"] = job_mod.finished(rdir) is not None and not differs and not cfg.get("force", False)
    model_id, problems = memo(["model", mcfg], lambda: loadable(cfg))
    train, evals, fps, data_problems = load_data(cfg)
    ahead = [
        f"config: {config_problem}" if config_problem else "",
        f"run dir holds the results of another run ({differs}); force=true replaces them" if differs else "",
    ]
    out["problems"] = list(dict.fromkeys(p for p in ahead + problems + data_problems if p))
    path = str(mcfg.get("path")) if mcfg.get("path") not in (None, "???") else None
    try:
        arch = memo(["arch", mcfg], lambda: est.arch_of(mcfg, path))
        lora = par.counted_lora(plain(cfg.train))
        prm = memo(["params", mcfg, lora], lambda: est.count_params(arch, lora))
    except est.PlanError as e:
        out["problems"].append(f"model: {e}")
        return out
    tok = memo(["tok", path, mcfg.get("revision")], lambda: est.local_tokenizer(mcfg, path))
    ln = est.measure(cfg, train, evals, tok, s.probe_items)
    limit = cfg.evaluation.get("limit")
    n_eval = {k: min(len(v), int(limit)) if limit else len(v) for k, v in evals.items()} if evals else None
    out["shared"] = {
        "detection": json.dumps([mcfg, plain(cfg.dataset), plain(cfg.detection), cfg.seed], default=str),
        "evaluate_base": json.dumps([mcfg, plain(cfg.dataset), plain(cfg.evaluation)], default=str),
    }
    out["batch"] = {
        "detection": int(cfg.detection.batch_size),
        "train": int(cfg.train.batch_size),
        "evaluation": int(cfg.evaluation.batch_size),
    }
    out.update(
        arch=arch,
        params=prm,
        lengths=ln,
        trains=strategy_mod.trains(plain(cfg.strategy)),
        memory=est.job_memory(cfg, arch, prm, ln),
        n_train=len(train or []) or None,
        times=est.job_times(cfg, arch, prm, ln, len(train) if train else None, n_eval, s),
        ckpt=bool(cfg.train.get("gradient_checkpointing")),
    )
    out["parallel"] = par.job_parallel(cfg, arch, prm, out, s.gpus)  # DDP / FSDP on 1 ... plan.gpus GPUs
    out["cache"], out["cache_why"] = None, "needs the model and data loadable here"
    if model_id and train is not None and not data_problems:
        try:
            out["cache"] = cache_walk(cfg, train, evals, fps, model_id)
        except KaftError as e:
            out["problems"].append(f"config: {e}")
    return out


# ----------------------------------------------------------------------------------------------- output
def _gb(parts: dict) -> str:
    return f"{sum(parts.values()):.1f} GB (" + " + ".join(f"{k} {v:.1f}" for k, v in parts.items()) + ")"


def _count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _dur(sec: float) -> str:
    return f"{sec / 3600:.1f} h" if sec >= 3600 else f"{sec / 60:.1f} min" if sec >= 60 else f"{sec:.0f} s"


def render(j: dict, s: Settings) -> list[str]:
    """The lines of one job: status, model, load problems, prompt lengths, memory against the GPU, time, cache."""
    lines = [
        f"job {j['num']}: {' '.join(j['overrides']) or '(defaults)'}",
        f"  run dir     {j['run_dir']}",
        f"  status      {'finished (results.json done): skipped on resubmission' if j['finished'] else 'to run'}",
    ]
    lines += [f"  problem     {p}" for p in j["problems"]]
    if "params" not in j:
        return lines
    a, p, ln, mem = j["arch"], j["params"], j["lengths"], j["memory"]
    lines.append(
        f"  model       {p.model_class}: {_count(p.total)} parameters ({a.num_hidden_layers} layers, hidden "
        f"{a.hidden_size}, {a.num_attention_heads} heads / {a.num_key_value_heads} KV, vocab {a.vocab_size}); "
        + ("trainable: all (train=full)" if j["parallel"]["full"] else f"LoRA trainable {_count(p.lora)} ")
        + ("" if j["parallel"]["full"] else f"({100 * p.lora / p.total:.2f}%)")
    )
    lines.append(
        f"  prompts     probe {ln.probe} tokens (longest; mean {ln.probe_mean:.0f}), training {ln.train:.0f}, "
        f"evaluation {ln.eval:.0f} - {ln.how}"
    )
    used = "train_checkpointing" if j["ckpt"] else "train_no_checkpointing"
    seqs = mem["_seqs"]
    for label, key, note in (
        ("detection", "detection", f"{seqs['seqs']} sequence(s) per prompt, {ln.probe}+{seqs['new']} tokens"),
        ("training", used, "gradient checkpointing " + ("on" if j["ckpt"] else "off") + ", batch × max_length"),
        (
            "(ckpt off)" if j["ckpt"] else "(ckpt on)",
            "train_no_checkpointing" if j["ckpt"] else "train_checkpointing",
            "the other setting",
        ),
        ("evaluation", "evaluation", "lm-eval loglikelihood batch"),
    ):
        if key != "detection" and key != "evaluation" and not j["trains"]:
            lines += [] if label.startswith("(") else ["  training    none (the strategy trains nothing)"]
            continue
        total = sum(mem[key].values())
        fits = f"fits {s.gpu_memory_gb:g} GB" if total <= s.gpu_memory_gb else f"DOES NOT FIT {s.gpu_memory_gb:g} GB"
        if total > s.gpu_memory_gb:
            fixed = sum(v for k, v in mem[key].items() if k in ("overhead", *par.STATE_KEYS))
            group = key.split("_")[0]
            most = est.max_batch(total, fixed, s.gpu_memory_gb, j["batch"][group])
            fits += f" (at most {group}.batch_size={most} fits)" if most >= 1 else " (not even batch 1)"
        lines.append(f"  {label:<11} {_gb(mem[key])} - {note}; {fits}")
    lines += par.render_lines(j, s.gpu_memory_gb, _dur)
    t = j["times"]
    per = "" if j["n_train"] else " per 1,000 training / benchmark items (data not loaded)"
    lines.append(
        f"  time        detection {_dur(t['detection'])}, training {_dur(t['train'])}, evaluation "
        f"{_dur(t['evaluate_base'] + t['evaluate'])} (base + tuned){per}; FLOP-based at MFU {s.mfu:g} of "
        f"{s.peak_tflops:g} TFLOP/s"
    )
    cache = j["cache"]
    lines.append(
        "  cache       "
        + (", ".join(f"{k}: {v}" for k, v in cache.items()) if cache is not None else f"not checked ({j['cache_why']})")
    )
    return lines


def _sweep_seconds(plans: list[dict]) -> float:
    """What the jobs still to run compute: stages the cache holds are left out, and detection and the base
    evaluation count once per model, data set and settings (the jobs share them through the cache)."""
    seen, total = set(), 0.0
    for j in plans:
        if j["finished"] or "times" not in j:
            continue
        for stage, sec in j["times"].items():
            if (j["cache"] or {}).get("detect" if stage == "detection" else stage) == "cached":
                continue
            if stage in j["shared"]:
                if (stage, j["shared"][stage]) in seen:
                    continue
                seen.add((stage, j["shared"][stage]))
            total += sec
    return total


def _too_big(j: dict, s: Settings) -> bool:
    if "memory" not in j:
        return False
    keys = ["detection", "evaluation"] + (
        ["train_checkpointing" if j["ckpt"] else "train_no_checkpointing"] if j["trains"] else []
    )
    return any(sum(j["memory"][k].values()) > s.gpu_memory_gb for k in keys)


def _launcher_note(cfg: DictConfig) -> str | None:
    choice = cfg.hydra.runtime.choices.get("hydra/launcher")
    launcher = cfg.hydra.launcher
    if "slurm" in str(launcher.get("_target_", "")).lower() and not (
        launcher.get("gpus_per_node") or launcher.get("gres")
    ):
        return (
            f"launcher {choice}: hydra.launcher.gpus_per_node is not set, so the jobs get no GPU; add "
            f"hydra.launcher.gpus_per_node=1"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    """The CLI. Exit 0 with the plan printed; 1 when a job has a problem (listed as ``problem``, e.g. an invalid
    config or a run dir holding another run's results); 2 with one ``kaft: error:`` line for an unusable command
    line."""
    args = list(sys.argv[1:] if argv is None else argv)
    multirun = any(a in ("-m", "--multirun") for a in args)
    bad = [a for a in args if a.startswith("-") and a not in ("-m", "--multirun")]
    logging.getLogger("kaft").setLevel(logging.WARNING)
    try:
        if bad:
            raise est.PlanError(f"kaft.sweep.plan takes kaft.run's overrides, -m and plan.KEY=VALUE only, not {bad[0]}")
        s = Settings.parse([a for a in args if a.startswith("plan.")])
        overrides = [a for a in args if not a.startswith(("-", "plan."))]
        with hydra_errors_as_one_line():
            jobs = compose_jobs(overrides, multirun)
            plans = [plan_job(num, ov, cfg, multirun, s) for num, ov, cfg in jobs]
    except est.PlanError as e:
        print(f"kaft: error: {e}", file=sys.stderr)
        return 2
    note = _launcher_note(jobs[0][2])
    print(
        f"kaft plan: {len(plans)} job(s); GPU {s.gpu_memory_gb:g} GB, {s.peak_tflops:g} TFLOP/s peak, MFU {s.mfu:g}"
        + (f"\nwarning: {note}" if note else "")
    )
    for j in plans:
        print("\n" + "\n".join(render(j, s)))
    todo = [j for j in plans if not j["finished"]]
    big = sum(_too_big(j, s) for j in todo)
    print(
        f"\n{len(plans) - len(todo)} of {len(plans)} job(s) finished; of the {len(todo)} to run, "
        f"{sum(bool(j['problems']) for j in todo)} cannot run as configured here (see 'problem') and {big} need "
        f"more than {s.gpu_memory_gb:g} GB in some stage (see 'DOES NOT FIT'); GPU time still to compute "
        f"{_dur(_sweep_seconds(plans))} at MFU {s.mfu:g}"
        + ("" if all(j.get("n_train") for j in todo) else " (per 1,000 items where the data was not loaded)")
    )
    return 1 if any(j["problems"] for j in plans) else 0


if __name__ == "__main__":
    sys.exit(main())
