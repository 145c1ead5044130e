"""Performance suite (issue 7): ``python -m perf.stages [--quick] [--only NAME[,NAME]]``.

One command, one table of ratios from one run. Every comparison is measured side by side in the same process run:
rounds interleave the variants (rotating their order), each ratio is the median over rounds of the per-round
ratio, so load from other processes on a shared machine mostly cancels. Sections (``--only``):

* ``train`` — LoRA SFT throughput of kaft's weighted trainer (:func:`kaft.train.train_lora`, ``loss=kaft``) vs TRL's
  ``SFTTrainer`` with ``peft_config`` on the same model, items (prompt + answer texts), batch, max length, LoRA
  config, optimiser and schedule. Tokens/s = non-pad tokens of the epoch / the Trainer's ``train_runtime``; "wall" is
  the whole call (tokenising, peft wrapping, training, saving the adapter). Peak memory = peak RSS above the
  process's RSS at the start of the call (a 5 ms sampler thread) on CPU, ``torch.cuda.max_memory_allocated`` on GPU.
  Models: the testbed model and a random-init Llama (hidden 512, 8 layers, vocab 32k).
* ``probe`` — probing items/s of ``detection.estimator=exact`` vs ``sample`` (No = Nr = 10, hf backend,
  :func:`kaft.detection.run_detection`) on the testbed train set.
* ``eval`` — :func:`kaft.evaluate.evaluate` on the in-memory model vs the ``lm_eval`` CLI (``--model hf
  --include_path`` with the task YAMLs kaft's inline configs correspond to) on the same saved model and tasks; also
  kaft in a fresh process (import + load + evaluate) so both sides pay a process start. Accuracies must agree.
* ``sweep`` — wall of ``python -m kaft.run -m loss=kaft,eaft alpha=0.1,0.5 experiment=smoke logger=none`` in a
  fresh cache holding only the testbed model vs (a) the sum of the jobs' stage timings (1 detection + base eval +
  4 x (train + eval)) and (b) one job run alone + 3 x (train + eval); then the same sweep re-run (same sweep dir).
* ``e2e`` — ``/usr/bin/time -v python -m kaft.run logger=none``: wall and peak RSS with a warm testbed model cache
  and (not with ``--quick``) cold, from an empty cache.
* ``scaling`` — probing (exact, sample) and training cost at 1x, 2x, 4x the train set (items replicated with new
  ids), and vs No, Nr and the partition K; reported as cost per item (or per order) relative to the first row.

``--quick`` shrinks every section to a few seconds (fewer items, one round, smoke configs) — for the smoke test,
not for numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("train", "probe", "eval", "sweep", "e2e", "scaling")
LORA = {
    "r": 16,
    "lora_alpha": 32,
    "dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
TRAIN_CFG = {
    "batch_size": 16,
    "grad_accum": 1,
    "lr": 1e-4,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.1,
    "epochs": 1,
    "max_length": 2048,
    "weight_decay": 0.0,
    "logging_steps": 10,
    "lora": LORA,
}
KAFT_LOSS = {"name": "kaft", "alpha": 0.1, "beta": 0.5}
GIB = 1024**3


# ----------------------------------------------------------------------------------------------- helpers
class Row(dict):
    """One line of the final table: section, what, value, reference, ratio, target, status."""


def row(section, what, value="", reference="", ratio=None, target="", ok=None, note="") -> Row:
    return Row(
        section=section,
        what=what,
        value=value,
        reference=reference,
        ratio=ratio,
        target=target,
        status="" if ok is None else ("met" if ok else "MISSED"),
        note=note,
    )


class PeakMemory:
    """Peak memory of a block: torch.cuda.max_memory_allocated on CUDA, else the peak RSS above the RSS at entry
    (sampled every ``interval`` s by a thread; torch ops release the GIL, so the sampler keeps running)."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak = interval, 0

    def __enter__(self):
        import psutil
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.proc = psutil.Process()
        self.start = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._max = self.start

        def poll():
            while not self._stop.is_set():
                self._max = max(self._max, self.proc.memory_info().rss)
                self._stop.wait(self.interval)

        self._t = threading.Thread(target=poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()  # absolute: weights + activations + optimiser state
            return
        self._stop.set()
        self._t.join()
        self._max = max(self._max, self.proc.memory_info().rss)
        self.peak = self._max - self.start


def interleave(variants: dict, rounds: int) -> dict[str, list]:
    """Run every ``variants[name]()`` once per round, rotating the order each round; returns name -> results."""
    names = list(variants)
    out = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            out[n].append(variants[n]())
    return out


def med(xs) -> float:
    return statistics.median(xs)


def _ratio_text(r: float) -> str:
    """``0.42x``; a ratio below 0.01 (a served re-run) keeps two significant digits (``4.7e-03x``), not ``0.00x``."""
    return f"{r:.2f}x" if r >= 0.01 or r <= 0 else f"{r:.1e}x"


def ratio_median(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[i] / den[i] (both lists in round order)."""
    return statistics.median(a / b for a, b in zip(num, den))


def fmt(x, unit="") -> str:
    if isinstance(x, str):
        return x
    if x is None:
        return ""
    if abs(x) >= 100:
        return f"{x:,.0f}{unit}"
    if abs(x) >= 10:
        return f"{x:.1f}{unit}"
    return f"{x:.2f}{unit}"


def env() -> dict:
    e = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "TOKENIZERS_PARALLELISM": "false",
    }
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return e


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    return f"nproc {os.cpu_count()}, CPU {cpu}, torch threads {torch.get_num_threads()}, {dev}"


class Ctx:
    """Shared state: the testbed model (loaded once), its items, args."""

    def __init__(self, args):
        self.args, self.quick = args, args.quick
        self._tb = None

    @property
    def testbed_cfg(self) -> dict:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(ROOT / "conf/testbed/default.yaml"))

    def testbed(self):
        """(model path, model, tokenizer, train items, eval benchmarks) of the testbed."""
        if self._tb is None:
            from kaft import modeling
            from kaft.data import load_items
            from kaft.testbed.model import build_model

            tb = self.testbed_cfg
            path = build_model(tb, self.args.cache, progress=False)
            device = "cuda" if _cuda() else "cpu"
            model, tok = modeling.load({"source": "local", "dtype": "float32"}, str(path), device)
            items = load_items(
                {"source": "testbed", "split": "train"},
                domain="geography",
                config={"testbed": tb},
                cache_dir=self.args.cache,
            )
            evals = {
                n: load_items(
                    {"source": "testbed", "split": s},
                    domain="geography",
                    config={"testbed": tb},
                    cache_dir=self.args.cache,
                )
                for n, s in (("testbed_id", "test_id"), ("testbed_ood", "test_ood"))
            }
            self._tb = (path, model, tok, items, evals)
        return self._tb


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def replicate(items, times: int):
    """``times`` copies of ``items`` with new ids (copy 0 keeps the original ids)."""
    import dataclasses

    return [it if k == 0 else dataclasses.replace(it, id=f"{it.id}#r{k}") for k in range(times) for it in items]


def kaft_weights(n: int, seed: int = 0) -> list[float]:
    """Plausible KaFT rewards (alpha / beta / 1 / 1 for the four subsets), in a seeded random order."""
    rng = random.Random(seed)
    return [rng.choice([0.1, 0.5, 1.0, 1.0]) for _ in range(n)]


# ----------------------------------------------------------------------------------------------- train
def mid_llama(vocab: int = 32000, hidden: int = 512, layers: int = 8, tok=None, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    m = LlamaForCausalLM(cfg)
    return m.to("cuda") if _cuda() else m


def run_kaft_train(base, tok, items, weights, train_cfg, out_dir, copy_model: bool = True) -> dict:
    from kaft.train import TrainSpec, build_examples, train_lora

    tokens = sum(
        len(r["input_ids"]) for r in build_examples(tok, items, weights, "geography", None, train_cfg["max_length"])
    )
    model = copy.deepcopy(base) if copy_model else base
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        train_lora(
            model, tok, items, weights, TrainSpec(loss=KAFT_LOSS, train=train_cfg, seed=0, domain="geography"), out_dir
        )
    wall = time.perf_counter() - t0
    log = json.loads((Path(out_dir) / "train_log.json").read_text())
    runtime = next(h["train_runtime"] for h in reversed(log["log_history"]) if "train_runtime" in h)
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"wall": wall, "runtime": runtime, "tokens": tokens, "tok_s": tokens / runtime, "mem": mem.peak}


def run_trl_train(base, tok, items, train_cfg, out_dir, copy_model: bool = True) -> dict:
    """TRL SFTTrainer + peft_config, settings matched to kaft.train.train_lora (prompt-completion data: the loss on
    the completion only; TRL appends EOS to each completion, one more trained token per example)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from kaft.prompts import DEFAULT_INSTRUCTION, answer_text, format_question

    ds = Dataset.from_list(
        [
            {
                "prompt": format_question(it.question, it.options, it.domain or "geography", DEFAULT_INSTRUCTION),
                "completion": answer_text(it.answer),
            }
            for it in items
        ]
    )
    use_cuda = torch.cuda.is_available()
    bf16 = bool(use_cuda and torch.cuda.is_bf16_supported())
    lora = train_cfg["lora"]
    cfg = SFTConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=train_cfg["batch_size"],
        gradient_accumulation_steps=train_cfg["grad_accum"],
        learning_rate=train_cfg["lr"],
        warmup_steps=train_cfg["warmup_ratio"],
        num_train_epochs=train_cfg["epochs"],
        weight_decay=train_cfg["weight_decay"],
        lr_scheduler_type=train_cfg["lr_scheduler"],
        logging_steps=train_cfg["logging_steps"],
        save_strategy="no",
        report_to="none",
        seed=0,
        data_seed=0,
        bf16=bf16,
        use_cpu=not use_cuda,
        dataloader_num_workers=0,
        log_level="warning",
        activation_checkpointing=False,  # transformers 5 name (gradient_checkpointing is its deprecated alias)
        max_length=train_cfg["max_length"],
        packing=False,
        padding_free=False,
        disable_tqdm=True,
    )
    peft_cfg = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora["r"],
        lora_alpha=lora["lora_alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]),
        bias="none",
    )
    model = copy.deepcopy(base) if copy_model else base
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_cfg)
        result = trainer.train()
        trainer.save_model(str(out_dir))
    wall = time.perf_counter() - t0
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    runtime = result.metrics["train_runtime"]
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"wall": wall, "runtime": runtime, "tokens": tokens, "tok_s": tokens / runtime, "mem": mem.peak}


def _train_models(ctx: Ctx, which: str | None = None):
    """[(name, base model, items)] of the train section (``which``: only that name's model is built)."""
    _, tb_model, tok, items, _ = ctx.testbed()
    out = []
    if which in (None, "testbed"):
        out.append(("testbed", tb_model, items[:32] if ctx.quick else items))
    if which in (None, "llama"):
        m = mid_llama(hidden=128, layers=2, tok=tok) if ctx.quick else mid_llama(tok=tok)
        out.append(("llama", m, items[:16] if ctx.quick else items[:96]))
    return out


def _hwm() -> int | None:
    """VmHWM (peak RSS) of this process in bytes, from /proc (Linux), else None."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> int:
    """Reset the peak-RSS mark to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``) so the peak after a
    block is the block's own; returns the RSS at the reset (ru_maxrss where /proc is missing)."""
    import resource

    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _hwm()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_train(ctx: Ctx, spec: str) -> None:
    """In a fresh process: one training run (``variant:model``), printing its peak RSS as JSON (the process's
    ru_maxrss before training — model loaded, libraries imported — and after)."""
    import resource

    variant, which = spec.split(":")
    ((_, base, its),) = _train_models(ctx, which)
    tok = ctx.testbed()[2]
    import peft  # noqa: F401 - both variants import peft/transformers' Trainer; TRL is imported by its runner

    if variant == "trl":
        import trl  # noqa: F401
    before = _reset_hwm()
    tmp = Path(tempfile.mkdtemp(prefix="kaft_perf_child_"))
    if variant == "kaft":
        r = run_kaft_train(base, tok, its, kaft_weights(len(its)), TRAIN_CFG, tmp / "o", copy_model=False)
    else:
        r = run_trl_train(base, tok, its, TRAIN_CFG, tmp / "o", copy_model=False)
    after = _hwm() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    shutil.rmtree(tmp, ignore_errors=True)
    print("PERF_CHILD " + json.dumps({"before": before, "peak": after, "tok_s": r["tok_s"]}))


def _child_rss(ctx: Ctx, variant: str, which: str) -> dict:
    cmd = [sys.executable, "-m", "perf.stages", "--child-train", f"{variant}:{which}", "--cache", ctx.args.cache]
    if ctx.quick:
        cmd.append("--quick")
    p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True)
    line = [x for x in p.stdout.splitlines() if x.startswith("PERF_CHILD ")]
    if p.returncode or not line:
        raise RuntimeError(f"child training {variant}:{which} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return json.loads(line[-1].split(" ", 1)[1])


def section_train(ctx: Ctx) -> list[Row]:
    import transformers

    transformers.logging.set_verbosity_error()
    tok = ctx.testbed()[2]
    rounds = 1 if ctx.quick else ctx.args.rounds
    tmp = Path(tempfile.mkdtemp(prefix="kaft_perf_train_"))
    rows = []
    for which, base, its in _train_models(ctx):
        name = f"{which} ({sum(p.numel() for p in base.parameters()) / 1e6:.1f}M)"
        weights = kaft_weights(len(its))
        variants = {
            "kaft": lambda: run_kaft_train(base, tok, its, weights, TRAIN_CFG, tmp / "kaft"),
            "trl": lambda: run_trl_train(base, tok, its, TRAIN_CFG, tmp / "trl"),
        }
        # warm-up (untimed): first-call costs (lazy imports, allocator growth, kernel selection) hit neither side
        w = {
            "kaft": lambda: run_kaft_train(base, tok, its[:16], weights[:16], TRAIN_CFG, tmp / "kaft"),
            "trl": lambda: run_trl_train(base, tok, its[:16], TRAIN_CFG, tmp / "trl"),
        }
        interleave(w, 1)
        res = interleave(variants, rounds)
        k, t = res["kaft"], res["trl"]
        r = ratio_median([x["tok_s"] for x in k], [x["tok_s"] for x in t])
        rows.append(
            row(
                "train",
                f"{name}: tokens/s (train loop), {len(its)} items, batch 16",
                f"{med([x['tok_s'] for x in k]):,.0f} kaft",
                f"{med([x['tok_s'] for x in t]):,.0f} TRL",
                r,
                ">= 1.0x",
                r >= 1.0,
                note=f"tokens/epoch kaft {k[0]['tokens']}, TRL {t[0]['tokens']} (TRL appends EOS)",
            )
        )
        w = ratio_median([x["wall"] for x in t], [x["wall"] for x in k])
        rows.append(
            row(
                "train",
                f"{name}: whole call (tokenise+wrap+train+save), speed",
                f"{med([x['wall'] for x in k]):.2f} s kaft",
                f"{med([x['wall'] for x in t]):.2f} s TRL",
                w,
                ">= 1.0x",
                w >= 1.0,
            )
        )
        if _cuda():
            mk, mt = med([x["mem"] for x in k]), med([x["mem"] for x in t])
            rows.append(
                row(
                    "train",
                    f"{name}: peak GPU memory allocated",
                    f"{mk / 2**20:.0f} MiB kaft",
                    f"{mt / 2**20:.0f} MiB TRL",
                    mk / mt,
                    "<= 1.0x",
                    mk <= mt,
                )
            )
        elif not (ctx.quick and which != "testbed"):  # RSS peaks need a fresh process each (freed memory stays)
            ck, ct = _child_rss(ctx, "kaft", which), _child_rss(ctx, "trl", which)
            dk, dt = ck["peak"] - ck["before"], ct["peak"] - ct["before"]
            rows.append(
                row(
                    "train",
                    f"{name}: peak RSS of a fresh process (training only)",
                    f"{ck['peak'] / 2**20:,.0f} MiB kaft",
                    f"{ct['peak'] / 2**20:,.0f} MiB TRL",
                    ck["peak"] / ct["peak"],
                    "<= 1.0x",
                    ck["peak"] <= ct["peak"],
                    note=f"increase over the RSS before training (model loaded, libraries imported): "
                    f"kaft {dk / 2**20:.0f} MiB, TRL {dt / 2**20:.0f} MiB",
                )
            )
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


# ----------------------------------------------------------------------------------------------- probe
PROBE_CFG = {
    "name": "diversified",
    "num_orders": 10,
    "num_samples": 10,
    "temperature": 0.7,
    "shots": 3,
    "max_new_tokens": 4,
    "batch_size": 16,
    "chunk_size": 100_000,
}


def time_probe(model, tok, items, cfg) -> float:
    from kaft import detection

    b = detection.HFBackend(
        model, tok, batch_size=cfg.get("batch_size", 16), share_prefix=cfg.get("share_prefix", True)
    )
    t0 = time.perf_counter()
    detection.run_detection(b, items, cfg, 0, "geography", progress=False)
    return time.perf_counter() - t0


def section_probe(ctx: Ctx) -> list[Row]:
    _, model, tok, items, _ = ctx.testbed()
    its = items[:24] if ctx.quick else items
    cfg = {**PROBE_CFG, **({"num_orders": 2, "num_samples": 2} if ctx.quick else {})}
    time_probe(model, tok, its[:8], {**cfg, "estimator": "exact"})  # warm-up
    res = interleave(
        {
            "exact": lambda: time_probe(model, tok, its, {**cfg, "estimator": "exact"}),
            "sample": lambda: time_probe(model, tok, its, {**cfg, "estimator": "sample"}),
        },
        1 if ctx.quick else ctx.args.rounds,
    )
    e, s = med(res["exact"]), med(res["sample"])
    r = ratio_median(res["sample"], res["exact"])
    return [
        row(
            "probe",
            f"items/s, exact vs sample (No={cfg['num_orders']}, Nr={cfg['num_samples']}, 3-shot, "
            f"batch {cfg['batch_size']}), {len(its)} items",
            f"{len(its) / e:.1f} exact",
            f"{len(its) / s:.1f} sample",
            r,
            "exact faster",
            r > 1.0,
            note=f"wall exact {e:.2f} s, sample {s:.2f} s",
        )
    ]


# ----------------------------------------------------------------------------------------------- eval
def write_cli_tasks(evals: dict, work_dir: Path) -> tuple[Path, list[str]]:
    """The YAML task files (one per benchmark) equal to kaft's inline task configs, for ``--include_path``."""
    import yaml

    from kaft.evaluate import task_config, task_name, write_task_file

    work_dir.mkdir(parents=True, exist_ok=True)
    tasks = []
    for name, items in evals.items():
        task = task_name(name, set(tasks))
        cfg = task_config(task, write_task_file(items, work_dir / "data", name, "geography"))
        (work_dir / f"{task}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        tasks.append(task)
    return work_dir, tasks


KAFT_EVAL_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from kaft import modeling
from kaft.data import load_items
from kaft.evaluate import evaluate
from omegaconf import OmegaConf
tb = OmegaConf.to_container(OmegaConf.load(sys.argv[2]))
evals = {n: load_items({"source": "testbed", "split": s}, domain="geography", config={"testbed": tb}, cache_dir=sys.argv[3])
         for n, s in (("testbed_id", "test_id"), ("testbed_ood", "test_ood"))}
if int(sys.argv[5]):
    evals = {n: v[:int(sys.argv[5])] for n, v in evals.items()}
model, tok = modeling.load({"source": "local", "dtype": "float32"}, sys.argv[1], None)
m = evaluate(model, tok, evals, sys.argv[4], "geography", batch_size=16)
print("PERF_CHILD " + json.dumps({n: b["acc"] for n, b in m["benchmarks"].items()}))
"""


def section_eval(ctx: Ctx) -> list[Row]:
    from kaft.evaluate import evaluate, task_name

    path, model, tok, _, evals = ctx.testbed()
    limit = 16 if ctx.quick else 0
    if limit:
        evals = {n: v[:limit] for n, v in evals.items()}
    tmp = Path(tempfile.mkdtemp(prefix="kaft_perf_eval_"))
    inc, tasks = write_cli_tasks(evals, tmp / "tasks")
    device = "cuda" if _cuda() else "cpu"
    accs = {}

    def inmem():
        t0 = time.perf_counter()
        m = evaluate(model, tok, evals, tmp / "inmem", "geography", batch_size=16)
        accs["kaft in-memory"] = {task_name(n): b["acc"] for n, b in m["benchmarks"].items()}
        return time.perf_counter() - t0

    def fresh():
        t0 = time.perf_counter()
        p = subprocess.run(
            [
                sys.executable,
                "-c",
                KAFT_EVAL_CHILD,
                str(path),
                str(ROOT / "conf/testbed/default.yaml"),
                ctx.args.cache,
                str(tmp / "fresh"),
                str(limit),
            ],
            cwd=tmp,
            env=env(),
            capture_output=True,
            text=True,
        )
        dt = time.perf_counter() - t0
        line = [x for x in p.stdout.splitlines() if x.startswith("PERF_CHILD ")]
        if p.returncode or not line:
            raise RuntimeError(f"kaft eval child failed:\n{p.stderr[-3000:]}")
        accs["kaft fresh process"] = {task_name(n): a for n, a in json.loads(line[-1].split(" ", 1)[1]).items()}
        return dt

    def cli():
        out = tmp / "cli_out"
        shutil.rmtree(out, ignore_errors=True)
        exe = shutil.which("lm_eval", path=os.path.dirname(sys.executable)) or shutil.which("lm_eval") or "lm_eval"
        cmd = [
            exe,
            "--model",
            "hf",
            "--model_args",
            f"pretrained={path},dtype=float32",
            "--tasks",
            ",".join(tasks),
            "--include_path",
            str(inc),
            "--batch_size",
            "16",
            "--device",
            device,
            "--output_path",
            str(out),
        ]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=tmp, env=env(), capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if p.returncode:
            raise RuntimeError(f"lm_eval CLI failed ({' '.join(cmd)}):\n{p.stderr[-3000:]}")
        res = json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())["results"]
        accs["lm_eval CLI"] = {t: res[t]["acc,none"] for t in tasks}
        return dt

    inmem()  # warm-up: datasets' json cache for the in-memory tasks
    res = interleave({"inmem": inmem, "fresh": fresh, "cli": cli}, 1 if ctx.quick else ctx.args.rounds)
    same = len({json.dumps(v, sort_keys=True) for v in accs.values()}) == 1
    n = sum(len(v) for v in evals.values())
    note = f"{n} items, {len(tasks)} tasks, batch 16; accuracies " + (
        "identical: " + json.dumps(accs["lm_eval CLI"]) if same else "DIFFER: " + json.dumps(accs)
    )
    r1 = ratio_median(res["inmem"], res["cli"])
    r2 = ratio_median(res["fresh"], res["cli"])
    shutil.rmtree(tmp, ignore_errors=True)
    return [
        row(
            "eval",
            "wall, kaft.evaluate in-memory / lm_eval CLI",
            f"{med(res['inmem']):.2f} s kaft",
            f"{med(res['cli']):.2f} s CLI",
            r1,
            "<= 1.0x",
            r1 <= 1.0 and same,
            note=note,
        ),
        row(
            "eval",
            "wall, kaft fresh process (import+load+eval) / lm_eval CLI",
            f"{med(res['fresh']):.2f} s kaft",
            f"{med(res['cli']):.2f} s CLI",
            r2,
            "<= 1.0x",
            r2 <= 1.0 and same,
        ),
    ]


# ----------------------------------------------------------------------------------------------- sweep / e2e
QUICK_JOB = ["+dataset.train.limit=24", "evaluation.limit=8"]  # --quick: the smoke job on fewer items


def fresh_cache(ctx: Ctx, dest: Path, with_model: bool = True) -> Path:
    """An empty cache dir, holding a copy of the testbed model (built in ctx's cache first if needed)."""
    dest.mkdir(parents=True, exist_ok=True)
    if with_model:
        src = Path(ctx.testbed()[0])  # <cache>/testbed_model/<hash>
        shutil.copytree(src, dest / "testbed_model" / src.name)
    return dest


def kaft_cli(args: list[str], cache: Path, cwd: Path, timed: bool = False) -> tuple[float, dict, str]:
    """Run ``python -m kaft.run *args`` (KAFT_CACHE_DIR=cache); returns (wall s, /usr/bin/time fields, output)."""
    cmd = [sys.executable, "-m", "kaft.run", *args, "progress=false"]
    gnu_time = shutil.which("time", path="/usr/bin") if timed else None
    if gnu_time:
        cmd = [gnu_time, "-v", *cmd]
    e = {**env(), "KAFT_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    fields = {}
    if gnu_time:
        for line in p.stderr.splitlines():
            if ":" in line and line.startswith("\t"):
                k, v = line.strip().rsplit(": ", 1) if ": " in line else (line.strip(), "")
                fields[k] = v
    else:
        import resource

        fields["Maximum resident set size (kbytes)"] = str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return wall, fields, p.stdout + p.stderr


def _job_results(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]


def section_sweep(ctx: Ctx) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="kaft_perf_sweep_"))
    common = ["experiment=smoke", "logger=none"] + (QUICK_JOB if ctx.quick else [])
    sweep_dir = tmp / "sweep"
    args = ["-m", "loss=kaft,eaft", "alpha=0.1,0.5", *common, f"hydra.sweep.dir={sweep_dir}"]
    w1, _, _ = kaft_cli(args, fresh_cache(ctx, tmp / "cache_sweep"), tmp)
    jobs = _job_results(sweep_dir)
    if len(jobs) != 4:
        raise RuntimeError(f"sweep wrote {len(jobs)} results.json, expected 4 ({sweep_dir})")
    t = [j["timings"] for j in jobs]
    detect = max(x.get("detect", 0.0) for x in t)
    base = max(x.get("evaluate_base", 0.0) for x in t)
    te = [x.get("train", 0.0) + x.get("evaluate", 0.0) for x in t]
    stages = detect + base + sum(te)
    # one job alone, in its own fresh cache: process start + detection + base eval + one train + eval
    solo_dir = tmp / "solo"
    ws, _, _ = kaft_cli(
        ["loss=kaft", "alpha=0.1", *common, f"hydra.run.dir={solo_dir}"], fresh_cache(ctx, tmp / "cache_solo"), tmp
    )
    solo = json.loads((solo_dir / "results.json").read_text())["timings"]
    alone = ws + 3 * statistics.fmean(te)
    # re-run the finished sweep: served from its receipt (kaft/sweep/receipt.py), else every job finds its results.json
    w2, _, out2 = kaft_cli(args, tmp / "cache_sweep", tmp)
    how = "served from the sweep receipt" if "served from the sweep receipt" in out2 else "through Hydra (no receipt)"
    shutil.rmtree(tmp, ignore_errors=True)
    r_a, r_b, r_c = w1 / stages, w1 / alone, w2 / w1
    return [
        row(
            "sweep",
            "2x2 sweep wall / stage seconds (1 detect + base eval + 4 x (train+eval))",
            f"{w1:.1f} s",
            f"{stages:.1f} s",
            r_a,
            "<= 1.1x",
            r_a <= 1.1,
            note=f"detect {detect:.1f} s, base eval {base:.1f} s, train+eval per job "
            f"{', '.join(f'{x:.1f}' for x in te)} s; solo job timings {solo}",
        ),
        row(
            "sweep",
            "2x2 sweep wall / (one job alone + 3 x (train+eval))",
            f"{w1:.1f} s",
            f"{alone:.1f} s",
            r_b,
            "<= 1.1x",
            r_b <= 1.1,
            note=f"one job alone (fresh process and cache): {ws:.1f} s wall",
        ),
        row(
            "sweep",
            "re-run of the finished sweep / first run",
            f"{w2:.1f} s",
            f"{w1:.1f} s",
            r_c,
            "< 0.05x",
            r_c < 0.05,
            note=f"the re-run was {how}",
        ),
    ]


def _rss_gib(fields: dict) -> float:
    return int(fields.get("Maximum resident set size (kbytes)", 0)) * 1024 / GIB


def section_e2e(ctx: Ctx) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="kaft_perf_e2e_"))
    extra = ["experiment=smoke", *QUICK_JOB] if ctx.quick else []
    label = "experiment=smoke" if ctx.quick else "default job"
    rows = []
    runs = [("warm testbed model", True)] + ([] if ctx.quick or ctx.args.no_cold else [("cold, empty cache", False)])
    for what, warm in runs:
        cache = fresh_cache(ctx, tmp / f"cache_{int(warm)}", with_model=warm)
        wall, fields, _ = kaft_cli(
            ["logger=none", *extra, f"hydra.run.dir={tmp / f'run_{int(warm)}'}"], cache, tmp, timed=True
        )
        rss = _rss_gib(fields)
        timings = json.loads((tmp / f"run_{int(warm)}" / "results.json").read_text())["timings"]
        rows.append(
            row(
                "e2e",
                f"{label} wall ({what})",
                f"{wall:.1f} s",
                "300 s",
                wall / 300,
                "<= 5 min",
                wall <= 300,
                note="stage seconds " + json.dumps(timings),
            )
        )
        rows.append(row("e2e", f"{label} peak RSS ({what})", f"{rss:.2f} GiB", "4 GiB", rss / 4, "<= 4 GiB", rss <= 4))
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


# ----------------------------------------------------------------------------------------------- scaling
def section_scaling(ctx: Ctx) -> list[Row]:
    from kaft import losses, partition

    _, model, tok, items, _ = ctx.testbed()
    base_items = items[:16] if ctx.quick else items
    tmp = Path(tempfile.mkdtemp(prefix="kaft_perf_scale_"))
    sizes = (1, 2, 4)
    ex = {**PROBE_CFG, "estimator": "exact", "num_orders": 4 if ctx.quick else 10}
    sa = {**PROBE_CFG, "estimator": "sample", "num_orders": 2 if ctx.quick else 4, "num_samples": 2 if ctx.quick else 4}
    time_probe(model, tok, base_items[:8], ex)  # warm-up
    run_kaft_train(model, tok, base_items[:16], kaft_weights(16), TRAIN_CFG, tmp / "w")

    def train_cost(its, weights):
        return run_kaft_train(model, tok, its, weights, TRAIN_CFG, tmp / "t")["wall"]

    rows = []
    reps = ctx.args.scaling_reps

    def series(label, xs, cost, unit, expect, x_label):
        """cost(x) for x in xs; ratio = (cost / unit(x)) relative to the first row: 1.0 = linear in ``unit``."""
        cs = [cost(x) for x in xs]
        if reps > 1:  # the minimum over repetitions run in reverse order (interference only adds time)
            cs = [min(a, b) for a, b in zip(cs, reversed([cost(x) for x in reversed(xs)]))]
        first = cs[0] / unit(xs[0])
        for x, c in zip(xs, cs):
            r = (c / unit(x)) / first
            rows.append(row("scaling", f"{label}, {x_label}={x}", f"{c:.2f} s", "", r, expect))

    per_item = lambda x: x  # noqa: E731 - ratio = cost per item (per order) relative to the first row
    const = lambda x: 1  # noqa: E731 - ratio = cost relative to the first row

    series(
        f"probe exact No={ex['num_orders']}",
        sizes,
        lambda x: time_probe(model, tok, replicate(base_items, x), ex),
        per_item,
        "~1 (linear)",
        "items x",
    )
    series(
        f"probe sample No={sa['num_orders']} Nr={sa['num_samples']}",
        sizes,
        lambda x: time_probe(model, tok, replicate(base_items, x), sa),
        per_item,
        "~1 (linear)",
        "items x",
    )
    series(
        "train kaft (1 epoch)",
        sizes,
        lambda x: train_cost(replicate(base_items, x), kaft_weights(len(base_items) * x)),
        per_item,
        "~1 (linear)",
        "items x",
    )
    nrs = (1, 4, 16) if ctx.quick else (1, 10, 40)
    series(
        f"probe exact No={ex['num_orders']}",
        nrs,
        lambda n: time_probe(model, tok, base_items, {**ex, "num_samples": n}),
        const,
        "~1 (no Nr)",
        "Nr",
    )
    series(
        f"probe sample No={sa['num_orders']}",
        (2, 4, 8),
        lambda n: time_probe(model, tok, base_items, {**sa, "num_samples": n}),
        const,
        "<= Nr/Nr0",
        "Nr",
    )
    nos = (2, 4, 8)
    series(
        "probe exact",
        nos,
        lambda n: time_probe(model, tok, base_items, {**ex, "num_orders": n}),
        lambda n: n,
        "~1 (linear)",
        "No",
    )
    series(
        f"probe sample Nr={sa['num_samples']}",
        nos,
        lambda n: time_probe(model, tok, base_items, {**sa, "num_orders": n}),
        lambda n: n,
        "~1 (linear)",
        "No",
    )
    scores = [random.Random(i).random() for i in range(len(base_items))]

    def k_cost(k):
        t0 = time.perf_counter()
        subsets = partition.partition([it.id for it in base_items], scores, k, 0)
        rewards = [round(0.1 + 0.9 * i / (k - 1), 4) for i in range(k)]  # conf/partition: K != 4 needs rewards
        w = losses.sample_weights({"name": "kaft", "rewards": rewards}, subsets, scores, k)
        part = time.perf_counter() - t0
        return part + train_cost(base_items, w)

    series("partition + train kaft", (2, 4, 8), k_cost, const, "~1 (no K)", "K")
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


# ----------------------------------------------------------------------------------------------- main
def print_table(rows: list[Row]) -> None:
    cols = [
        ("section", "section"),
        ("measurement", "what"),
        ("value", "value"),
        ("reference", "reference"),
        ("ratio", "ratio"),
        ("target", "target"),
        ("status", "status"),
    ]
    cells = [
        [
            r["section"],
            r["what"],
            fmt(r["value"]),
            fmt(r["reference"]),
            "" if r["ratio"] is None else _ratio_text(r["ratio"]),
            r["target"],
            r["status"],
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (h, _) in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    print(line([h for h, _ in cols]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print(line(c))
    notes = [(i, r["note"]) for i, r in enumerate(rows) if r.get("note")]
    for i, n in notes:
        print(f"  [{rows[i]['section']}] {rows[i]['what']}: {n}")


def main(argv=None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke sizes: every section in seconds (not for numbers)")
    ap.add_argument("--only", default="", help=f"comma-separated sections of {', '.join(SECTIONS)} (default all)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison (full run)")
    ap.add_argument(
        "--cache",
        default=os.environ.get("KAFT_CACHE_DIR", os.path.expanduser("~/.cache/kaft")),
        help="cache dir holding (or receiving) the testbed model",
    )
    ap.add_argument("--no-cold", action="store_true", help="e2e: skip the cold (empty cache) run")
    ap.add_argument("--scaling-reps", type=int, default=1, help="scaling: repetitions (min taken) per point")
    ap.add_argument("--child-train", default=None, help=argparse.SUPPRESS)  # internal: one training run's RSS
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    for k, v in env().items():
        if k != "PYTHONPATH":
            os.environ.setdefault(k, v)

    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ctx = Ctx(args)
    if args.child_train:
        import transformers

        transformers.logging.set_verbosity_error()
        child_train(ctx, args.child_train)
        return []
    rows: list[Row] = []
    t0 = time.perf_counter()
    for name in only:
        ts = time.perf_counter()
        new = SECTION_FNS[name](ctx)
        rows += new
        print(f"[perf] {name}: {time.perf_counter() - ts:.0f} s", file=sys.stderr, flush=True)
    print(
        f"\nkaft perf{' --quick' if args.quick else ''} — {machine()}; "
        f"{time.perf_counter() - t0:.0f} s in all; ratios = median over interleaved rounds "
        f"({1 if args.quick else args.rounds}); speed ratios > 1 = kaft faster\n"
    )
    print_table(rows)
    return rows


SECTION_FNS = {
    "train": section_train,
    "probe": section_probe,
    "eval": section_eval,
    "sweep": section_sweep,
    "e2e": section_e2e,
    "scaling": section_scaling,
}

if __name__ == "__main__":
    main()
