"""Training methods on gpt2-tiny: full, transfer (frozen bottom) and LoRA (adapter + merge)."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from shared.catalog import find_base_model
from shared.spec import Hyperparameters, LoraOptions, MethodOptions
from worker.training.callbacks import RecordingCallbacks
from worker.training.checkpoints import latest_checkpoint
from worker.training.engine import train
from worker.training.methods import ADAPTER_DIR, count_parameters, cpu_copy, load_for_training
from worker.training.plan import Plan, plan_training, with_method

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Pack my box with five dozen liquor jugs. " * 3,
    "How vexingly quick daft zebras jump! " * 3,
] * 4


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def make_plan(models_dir: Path, method: MethodOptions, **hp: object) -> Plan:
    base = find_base_model("gpt2-tiny", models_dir)
    assert base is not None
    values = {"n_epochs": 1, "batch_size": 4, "block_size": 32, "learning_rate": 5e-3, **hp}
    plan = plan_training(Hyperparameters.model_validate(values), base, CORPUS, None, seed=3)
    return with_method(plan, method)


def run(plan: Plan, out: Path, **kwargs: object):
    callbacks = RecordingCallbacks()
    result = train(plan.spec, plan.train_blocks, plan.valid_blocks, out / "ckpt", out / "final",
                   callbacks, device="cpu", **kwargs)  # fmt: skip
    return result, callbacks


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


def test_full_trains_every_parameter(models_dir: Path) -> None:
    plan = make_plan(models_dir, MethodOptions())
    model = load_for_training(plan.spec, torch.device("cpu"), None)
    trainable, total = count_parameters(model)
    assert trainable == total == plan.summary["total_parameters"]
    assert plan.summary["trainable_parameters"] == total


def test_transfer_freezes_all_but_top_blocks(models_dir: Path, tmp_path: Path) -> None:
    plan = make_plan(models_dir, MethodOptions(training_method="transfer", trainable_layers=1))
    model = load_for_training(plan.spec, torch.device("cpu"), None)
    trainable, total = count_parameters(model)
    assert (trainable, total) == (
        plan.summary["trainable_parameters"],
        plan.summary["total_parameters"],
    )
    assert 0 < trainable < total
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "transformer.wte.weight" in frozen and "transformer.h.0.attn.c_attn.weight" in frozen
    assert "lm_head.weight" not in frozen and "transformer.ln_f.weight" not in frozen

    result, _ = run(plan, tmp_path)
    before = weights(Path(plan.spec.model_location))
    after = weights(result.model_dir)
    for name in frozen:
        assert torch.equal(before[name], after[name]), f"{name} changed but was frozen"
    top = f"transformer.h.{model.config.n_layer - 1}.mlp.c_fc.weight"
    assert not torch.equal(before[top], after[top])
    assert not torch.equal(after["lm_head.weight"], after["transformer.wte.weight"])


def test_lora_saves_adapter_and_merged_model(models_dir: Path, tmp_path: Path) -> None:
    lora = LoraOptions(r=4, alpha=8, target_modules=["c_attn", "c_fc"])
    plan = make_plan(models_dir, MethodOptions(training_method="lora", lora=lora), n_epochs=2)
    model = load_for_training(plan.spec, torch.device("cpu"), None)
    trainable, total = count_parameters(model)
    assert trainable == plan.summary["trainable_parameters"]
    assert total == plan.summary["total_parameters"]
    assert trainable < total // 10

    result, _ = run(plan, tmp_path)
    adapter = result.model_dir / ADAPTER_DIR
    assert (adapter / "adapter_config.json").is_file()
    tensors = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_A" in name for name in tensors)
    merged = weights(result.model_dir)
    assert not any("lora" in name for name in merged)
    base = weights(Path(plan.spec.model_location))
    assert not torch.equal(base["transformer.h.0.attn.c_attn.weight"],
                           merged["transformer.h.0.attn.c_attn.weight"])  # fmt: skip
    assert torch.equal(base["transformer.h.0.attn.c_proj.weight"],
                       merged["transformer.h.0.attn.c_proj.weight"])  # fmt: skip
    # The merged model answers as the base model with the adapter applied does.
    merged_logits, adapted_logits, base_logits = lora_outputs(
        result.model_dir, Path(plan.spec.model_location)
    )
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=1e-4, atol=1e-5)
    assert (adapted_logits - base_logits).abs().max() > 1e-3  # the adapter changed something


def lora_outputs(folder: Path, base_location: Path) -> tuple[torch.Tensor, ...]:
    """Logits on one sentence: the merged model, base + the adapter (PEFT), and the base."""
    from peft import PeftModel

    ids = torch.tensor([[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]])
    merged = AutoModelForCausalLM.from_pretrained(folder).eval()
    base = AutoModelForCausalLM.from_pretrained(base_location).eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, folder / ADAPTER_DIR).eval()
        return merged(input_ids=ids).logits, adapted(input_ids=ids).logits, base_logits


def test_lora_resume_matches_uninterrupted(models_dir: Path, tmp_path: Path) -> None:
    lora = LoraOptions(r=4, alpha=8, dropout=0.0)
    plan = make_plan(models_dir, MethodOptions(training_method="lora", lora=lora), n_epochs=2)
    straight, _ = run(plan, tmp_path / "a")
    # Train one epoch's checkpoint, then resume from it to the end.
    first, _ = run(make_plan(models_dir, MethodOptions(training_method="lora", lora=lora),
                             n_epochs=2), tmp_path / "b")  # fmt: skip
    epoch_one = sorted((tmp_path / "b" / "ckpt").iterdir())[0]
    assert (epoch_one / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    # Resume in its own checkpoints folder, as a worker does (the best may be that checkpoint).
    shutil.copytree(epoch_one, tmp_path / "c" / "ckpt" / epoch_one.name)
    resumed, _ = run(plan, tmp_path / "c", resume_from=tmp_path / "c" / "ckpt" / epoch_one.name)
    assert latest_checkpoint(tmp_path / "c" / "ckpt") is not None
    assert resumed.step == straight.step
    a, c = weights(straight.model_dir), weights(resumed.model_dir)
    for name in a:
        torch.testing.assert_close(a[name], c[name], rtol=1e-5, atol=1e-6)


def test_lora_merge_copies_to_the_cpu_and_leaves_the_live_model(models_dir: Path) -> None:
    lora = LoraOptions(r=4, alpha=8, target_modules=["c_attn"])
    plan = make_plan(models_dir, MethodOptions(training_method="lora", lora=lora))
    model = load_for_training(plan.spec, torch.device("cpu"), None)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.5)  # B starts at zero: make the adapter change the weights
    live = {name: p.detach().clone() for name, p in model.state_dict().items()}
    copy = cpu_copy(model)
    originals = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert all(p.device.type == "cpu" for p in copy.parameters())
    assert not any(p.untyped_storage().data_ptr() in originals for p in copy.parameters())
    merged = copy.merge_and_unload()
    # Merging the copy leaves the training model exactly as it was (adapter unmerged).
    assert all(torch.equal(live[name], p) for name, p in model.state_dict().items())
    inner = model.base_model.model.transformer.h[0].attn.c_attn
    delta = (inner.lora_B["default"].weight @ inner.lora_A["default"].weight).T * (8 / 4)
    expected = inner.base_layer.weight + delta
    assert torch.allclose(merged.transformer.h[0].attn.c_attn.weight, expected, atol=1e-6)
    # GPT-2's tied head stays tied in the copy.
    assert merged.lm_head.weight is merged.transformer.wte.weight
