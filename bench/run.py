"""`make bench`: our engine against the Hugging Face Trainer, then the API figures, in one run.

Every training side is a whole process (imports, load, train, one evaluation, one save), timed
from outside, on the same model folder and the same blocks; sides alternate within each round
and the figures are medians over rounds. The last line is
`bench: trainer_ratio=.. small_ratio=.. padded_ratio=.. mfu=.. read_ratio=.. read_p99_ms=..
healthz_p99_ms=.. pickup_s=.. retokenize_ratio=..` (`na` where a figure could not be taken).
BENCH_QUICK=1: one round everywhere, a third of the data, no torch_compile configuration.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO, corpus, tiny_models_dir

QUICK = os.environ.get("BENCH_QUICK") == "1"
ROUNDS = 1 if QUICK else int(os.environ.get("BENCH_ROUNDS", "3"))
SMALL_ROUNDS = 1 if QUICK else int(os.environ.get("BENCH_SMALL_ROUNDS", "1"))


def trainer_configs() -> list[str]:
    """The Trainer's configurations: stock, bf16 autocast + fused AdamW, the same + compile.

    On a CPU without bf16 units bf16 is emulated (gpt2-tiny: 107 tokens/s against stock's 989,
    bench/NOTES.md), so the bf16 ones would never be the best and would take most of the bench's
    time: their fp32 counterparts (fused AdamW, + compile) run instead. torch_compile takes
    minutes to compile on 2 cores: quick runs leave that configuration out.
    """
    from worker.training.plan import cpu_has_bf16

    configs = (
        ["stock", "bf16", "compile"] if cpu_has_bf16() else ["stock", "fused", "fused_compile"]
    )
    return configs[:2] if QUICK else configs


TRAINER_CONFIGS = trainer_configs()
# The short-records comparison runs the Trainer without compile: stock and the fused one.
PADDED_CONFIGS = TRAINER_CONFIGS[:2]
# Column titles of the table, by configuration.
TITLES = {"stock": "Trainer stock", "bf16": "Trainer bf16+fused", "compile": "Trainer bf16+compile",
          "fused": "Trainer fp32+fused", "fused_compile": "Trainer fp32+fused+compile"}  # fmt: skip
TINY = {"block_size": 128, "batch_size": 8, "learning_rate": 1e-4, "seed": 42}
SMALL = {"block_size": 512, "batch_size": 8, "learning_rate": 1e-4, "seed": 42}
SMALL_SHAPE = {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024}
API_FIELDS = ["read_ratio", "read_p99_ms", "healthz_p99_ms", "pickup_s", "retokenize_ratio"]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def run_process(command: list[str], prefix: str) -> tuple[float, dict[str, Any]]:
    """(wall seconds, the JSON after `prefix` on stdout) of one whole process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith(prefix))
    return wall, json.loads(line[len(prefix) :])


def run_ours(model: Path, train: Path, valid: Path | None, out: Path, hp: dict[str, Any],
             packed_block: bool = True) -> tuple[float, int]:  # fmt: skip
    """Our CLI (python -m worker.training) as a job runs it; (wall, tokens trained)."""
    command = [sys.executable, "-m", "worker.training", "--model", str(model),
               "--train-file", str(train), "--output", str(out), "--n-epochs", "1",
               "--batch-size", str(hp["batch_size"]), "--learning-rate", str(hp["learning_rate"]),
               "--seed", str(hp["seed"]), "--device", "cpu", "--log-every", "50"]  # fmt: skip
    if packed_block:
        command += ["--block-size", str(hp["block_size"])]
    if valid is not None:
        command += ["--valid-file", str(valid)]
    wall, summary = run_process(command, "summary: ")
    return wall, int(summary["trained_tokens"])


def run_trainer(data: Path, model: Path, out: Path, config: str) -> tuple[float, int]:
    """The Trainer script (bench/trainer_job.py) in one configuration; (wall, tokens)."""
    command = [sys.executable, "-m", "bench.trainer_job", str(data), str(model), str(out), config]
    wall, summary = run_process(command, "trainer: ")
    return wall, int(summary["tokens"])


def plan_blocks(model: Path, train: Path, hp: dict[str, Any]) -> Any:
    """The plan our CLI makes for this file: the Trainer gets the very same blocks."""
    from shared.spec import Hyperparameters, TaskOptions
    from worker.training.__main__ import read_file, resolve_model
    from worker.training.task_plan import plan_task

    base = resolve_model(str(model))
    records, _ = read_file(train)
    given = {k: hp[k] for k in ("block_size", "batch_size", "learning_rate")}
    hps = Hyperparameters.model_validate({**given, "n_epochs": 1})
    return plan_task(hps, base, TaskOptions(), "causal_lm", records, None, hp["seed"])


def compare(name: str, model: Path, texts: list[str], hp: dict[str, Any], rounds: int,
            root: Path) -> dict[str, list[float]]:  # fmt: skip
    """Ours and each Trainer config, alternating, `rounds` times; tokens/s per side."""
    train = write_jsonl(root / f"{name}.jsonl", texts)
    plan = plan_blocks(model, train, hp)
    data = root / f"{name}.pt"
    torch.save({"train": plan.train_blocks, "valid": plan.valid_blocks, "pad_to": None,
                "hp": hp}, data)  # fmt: skip
    rates: dict[str, list[float]] = {"ours": [], **{c: [] for c in TRAINER_CONFIGS}}
    for r in range(rounds):
        # Alternate who goes first, so a load spike from other processes hits both sides.
        order = ["ours", *TRAINER_CONFIGS] if r % 2 == 0 else [*TRAINER_CONFIGS, "ours"]
        for side in order:
            out = root / f"{name}-{side}-{r}"
            if side == "ours":
                wall, tokens = run_ours(model, train, None, out, hp)
            else:
                wall, tokens = run_trainer(data, model, out, side)
            rates[side].append(tokens / wall)
            print(f"  {name} round {r + 1} {side:8s} {tokens / wall:9,.0f} tokens/s "
                  f"({tokens} tokens, {wall:.1f} s)", flush=True)  # fmt: skip
            subprocess.run(["rm", "-rf", str(out)], check=False)
    return rates


def ratio(rates: dict[str, list[float]]) -> tuple[float, str]:
    """Our median over the best Trainer configuration's median, and that configuration."""
    medians = {side: statistics.median(v) for side, v in rates.items()}
    best = max(TRAINER_CONFIGS, key=lambda c: medians[c])
    return medians["ours"] / medians[best], best


def short_records(count: int) -> list[str]:
    """Records of a few dozen tokens (lines of this repo's docs and code), like recipes."""
    lines = [x.strip() for text in corpus(2_000_000) for x in text.splitlines()]
    return [x for x in lines if 60 <= len(x) <= 200][:count]


@torch.no_grad()
def record_loss(model_dir: Path, records: list[list[int]]) -> float:
    """Token-weighted loss of each record on its own (neither side's layout favoured)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, count = 0.0, 0
    for row in records:
        ids = torch.tensor([row])
        loss = model(input_ids=ids, labels=ids).loss
        total += float(loss) * (len(row) - 1)
        count += len(row) - 1
    return total / max(1, count)


def padded(model: Path, root: Path, records: int) -> dict[str, Any]:
    """Short records: ours (packing, the default) against the Trainer padded to 180."""
    from worker.training.model_loading import load_tokenizer

    texts = short_records(records)
    held = len(texts) // 10
    train_texts, valid_texts = texts[held:], texts[:held]
    train = write_jsonl(root / "short.jsonl", train_texts)
    valid = write_jsonl(root / "short-valid.jsonl", valid_texts)
    tokenizer = load_tokenizer(str(model))
    eos = tokenizer.eos_token_id
    rows = [tokenizer(t).input_ids + [eos] for t in train_texts]
    valid_rows = [tokenizer(t).input_ids + [eos] for t in valid_texts]
    hp = {**TINY, "learning_rate": 1e-3}
    data = root / "short.pt"
    torch.save({"train": rows, "valid": valid_rows, "pad_to": 180, "hp": hp}, data)
    figures: dict[str, Any] = {"mean_tokens": sum(map(len, rows)) / len(rows)}
    wall, tokens = run_ours(model, train, valid, root / "short-ours", hp, packed_block=False)
    figures["ours"] = (tokens / wall, wall, record_loss(root / "short-ours" / "model", valid_rows))
    for config in PADDED_CONFIGS:
        out = root / f"short-{config}"
        wall, tokens = run_trainer(data, model, out, config)
        figures[config] = (tokens / wall, wall, record_loss(out / "model", valid_rows))
    return figures


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 6) -> float:
    """FLOP/s of the best of a few large matmuls at dtype on this CPU (the MFU denominator)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - started))
    return best


def flops_per_token(config: Any, seq: int) -> float:
    """6 x matmul weights (lm_head included) + attention's 12 x layers x width x seq."""
    width, layers, vocab = config.n_embd, config.n_layer, config.vocab_size
    matmul_weights = layers * 12 * width * width + vocab * width
    return 6 * matmul_weights + 12 * layers * width * seq


def mfu(model: Path, root: Path, steps: int) -> dict[str, Any]:
    """Steady training steps of the engine on gpt2-small shape over the measured matmul peak."""
    from shared.catalog import find_base_model
    from shared.spec import Hyperparameters
    from worker.training.plan import plan_training
    from worker.training.run_state import setup_run
    from worker.training.step import optimizer_step

    base = find_base_model(model.name, model.parent)
    assert base is not None
    given = {k: SMALL[k] for k in ("block_size", "batch_size", "learning_rate")}
    hps = Hyperparameters.model_validate({**given, "n_epochs": 1})
    plan = plan_training(hps, base, corpus(400_000), None, 42)
    run = setup_run(plan.spec, 100, torch.device("cpu"), None, plan.train_examples)
    examples = plan.train_examples
    batch = examples.batch(torch.arange(plan.spec.batch_size), run.device)
    optimizer_step(run, batch, plan.spec)  # warm-up (allocations, oneDNN kernels)
    started = time.perf_counter()
    for _ in range(steps):
        loss = optimizer_step(run, batch, plan.spec)[0]
    float(loss)
    seconds = (time.perf_counter() - started) / steps
    tokens = batch["input_ids"].numel()
    dtype = run.amp_dtype or torch.float32
    peak = matmul_peak(dtype)
    achieved = flops_per_token(run.model.config, SMALL["block_size"]) * tokens / seconds
    return {"tokens_per_s": tokens / seconds, "peak": peak, "achieved": achieved,
            "mfu": achieved / peak, "dtype": str(dtype).replace("torch.", "")}  # fmt: skip


def api_figures() -> dict[str, Any]:
    """bench/api_bench.py's figures (helper apiperf's part), `na` until it exists."""
    try:
        from bench import api_bench  # type: ignore[attr-defined]
    except ImportError:
        return {}
    figures: dict[str, Any] = {}
    try:
        if hasattr(api_bench, "api_figures"):
            figures = dict(api_bench.api_figures(quick=QUICK))
    except Exception as exc:  # the training figures still print
        print(f"api bench failed: {exc!r}", flush=True)
    return figures


def fmt(value: Any, digits: int = 2) -> str:
    return "na" if value is None else f"{value:.{digits}f}"


def main() -> None:
    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpt2ft-bench-") as tmp:
        root = Path(tmp)
        models = tiny_models_dir(root / "models")
        tiny = models / "gpt2-tiny"
        from shared.tokenizer_files import fetch_tokenizer_files
        from worker.training.tiny import build_random_gpt2

        tokenizer_dir = fetch_tokenizer_files(REPO / "var" / "tokenizer" / "gpt2")
        small = build_random_gpt2(models / "gpt2-small-shape", tokenizer_dir, SMALL_SHAPE,
                                  "gpt2-small shape, random init (bench)")  # fmt: skip

        print(f"gpt2-tiny seq 128, {ROUNDS} rounds (whole-process tokens/s):", flush=True)
        tiny_rates = compare("tiny", tiny, corpus(60_000 if QUICK else 200_000), TINY, ROUNDS, root)
        figures["trainer_ratio"], tiny_best = ratio(tiny_rates)

        print(f"gpt2-small shape seq 512, {SMALL_ROUNDS} round(s):", flush=True)
        small_rates = compare("small", small, corpus(30_000 if QUICK else 60_000), SMALL,
                              SMALL_ROUNDS, root)  # fmt: skip
        figures["small_ratio"], small_best = ratio(small_rates)

        print("short records: ours (packed) vs Trainer padded to 180:", flush=True)
        short = padded(tiny, root, 600 if QUICK else 2000)
        best_padded = max(PADDED_CONFIGS, key=lambda c: short[c][0])
        figures["padded_ratio"] = short["ours"][0] / short[best_padded][0]

        print("MFU, gpt2-small shape seq 512 through the engine's optimizer_step:", flush=True)
        m = mfu(small, root, 2 if QUICK else 3)
        figures["mfu"] = m["mfu"]

    api = api_figures()
    figures.update({k: v for k, v in api.items() if k in API_FIELDS})

    print(
        "\n| run | ours tokens/s | " + " | ".join(TITLES[c] for c in TRAINER_CONFIGS) + " | ratio |"
    )
    print("|---|---|" + "---|" * len(TRAINER_CONFIGS) + "---|")
    for label, rates, best in (("gpt2-tiny seq 128", tiny_rates, tiny_best),
                               ("gpt2-small shape seq 512", small_rates, small_best)):  # fmt: skip
        med = {side: statistics.median(v) for side, v in rates.items()}
        theirs = " | ".join(f"{med[c]:,.0f}" for c in TRAINER_CONFIGS)
        print(f"| {label} | {med['ours']:,.0f} | {theirs} | "
              f"{med['ours'] / med[best]:.2f} (vs {best}) |")  # fmt: skip
    print(
        f"\nshort records (mean {short['mean_tokens']:.0f} tokens): real tokens/s, wall, "
        "held-out loss, loss per wall-second drop from ln(vocab)"
    )
    for side in ("ours", *PADDED_CONFIGS):
        rate, wall, loss = short[side]
        print(f"  {side:6s} {rate:9,.0f} tokens/s  {wall:6.1f} s  loss {loss:.3f}  "
              f"{(10.825 - loss) / wall:.4f} loss/s")  # fmt: skip
    print(f"MFU: {m['tokens_per_s']:,.0f} tokens/s x {m['achieved'] / m['tokens_per_s'] / 1e6:.0f} "
          f"MFLOP/token = {m['achieved'] / 1e9:.1f} GFLOP/s over a measured {m['dtype']} matmul "
          f"peak of {m['peak'] / 1e9:.1f} GFLOP/s")  # fmt: skip
    if api.get("table"):
        print("\nAPI (bench/api_bench.py):")
        for label, value in api["table"]:
            print(f"  {label}: {value}")
    errors = api.get("errors") or []
    for error in errors.items() if isinstance(errors, dict) else errors:
        print(f"  api: {error}")
    print(f"bench took {time.perf_counter() - started:.0f} s")
    names = ["trainer_ratio", "small_ratio", "padded_ratio", "mfu", *API_FIELDS]
    line = " ".join(f"{k}={fmt(figures.get(k))}" for k in names)
    print(f"bench: {line}")


if __name__ == "__main__":
    main()
