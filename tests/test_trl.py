"""TALAN under TRL's SFTTrainer, the Trainer most peft users fine-tune with: `talan.trainer.TalanTrainerMixin`
gives it TALAN's param group, TALAN's files in every checkpoint and beside the final adapter, and a resume
that restores them; TRL's padding-free batches (examples packed in one row, position ids restarting) restart
TALAN's memory at each example."""

import shutil

import pytest
import torch
from conftest import open_gates
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from train_helpers import ADAPTER_FILES, TALAN_FILES, make_local_checkpoint, max_diff

import talan
from talan.trainer import TALAN_GROUP, TalanTrainerMixin

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")


class TalanSFTTrainer(TalanTrainerMixin, trl.SFTTrainer):
    pass


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    return make_local_checkpoint(tmp_path_factory.mktemp("model"))


def patched(local_model, seed=0):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(local_model, dtype=torch.float32)
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    return talan.patch(model, talan.TalanConfig(latent_dim=8, num_slots=4, layer=1, backend="torch"))


def sft_trainer(local_model, out, model=None, **config):
    from transformers import AutoTokenizer

    data = datasets.Dataset.from_list([{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(32)])
    args = trl.SFTConfig(output_dir=str(out), use_cpu=True, report_to=[], seed=0, disable_tqdm=True,
                         **{"max_steps": 4, "save_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1,
                            "learning_rate": 1e-2, **config})
    return TalanSFTTrainer(model=model if model is not None else patched(local_model), args=args,
                           train_dataset=data, processing_class=AutoTokenizer.from_pretrained(local_model),
                           talan_lr=3e-2)


def test_sft_trainer_trains_talan_in_its_group_and_saves_it_beside_the_adapter(tmp_path, local_model):
    trainer = sft_trainer(local_model, tmp_path)
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if ".talan." in n}
    trainer.train()
    groups = trainer.optimizer.param_groups  # decay and no-decay groups of each
    assert {(g["name"], g["initial_lr"]) for g in groups} == {(TALAN_GROUP, 3e-2), ("adapter", 1e-2)}
    talan_ids = {id(p) for p in talan.talan_parameters(trainer.model)}
    assert talan_ids == {id(p) for g in groups if g["name"] == TALAN_GROUP for p in g["params"]}
    trained = {n: p for n, p in trainer.model.named_parameters() if ".talan." in n}
    assert max(max_diff({n: start[n]}, {n: trained[n].detach()}) for n in start) > 1e-4  # TALAN trained
    for step in (2, 4):
        assert ADAPTER_FILES | TALAN_FILES <= {p.name for p in (tmp_path / f"checkpoint-{step}").iterdir()}

    trainer.save_model(tmp_path / "final")
    assert ADAPTER_FILES | TALAN_FILES <= {p.name for p in (tmp_path / "final").iterdir()}
    reloaded = talan.load_pretrained(patched(local_model, seed=1), tmp_path / "final")
    assert max_diff(dict(zip(trained, talan.talan_parameters(reloaded))), {n: p.detach() for n, p in
                                                                           trained.items()}) == 0


def test_sft_trainer_given_a_peft_config_trains_the_patched_base_talan(tmp_path, local_model):
    """SFTTrainer(peft_config=...) wraps the patched base itself (peft first is then not the user's order):
    get_peft_model freezes TALAN, and the mixin turns its trainability scope back on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = talan.patch(AutoModelForCausalLM.from_pretrained(local_model, dtype=torch.float32),
                       talan.TalanConfig(latent_dim=8, num_slots=4, backend="torch"))
    data = datasets.Dataset.from_list([{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(8)])
    args = trl.SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=2, save_steps=2,
                         per_device_train_batch_size=4, disable_tqdm=True)
    trainer = TalanSFTTrainer(model=base, args=args, train_dataset=data, peft_config=LoraConfig(r=4),
                              processing_class=AutoTokenizer.from_pretrained(local_model))
    params = list(talan.talan_parameters(trainer.model))
    assert params and all(p.requires_grad for p in params)
    start = [p.detach().clone() for p in params]
    trainer.train()
    assert all(not torch.equal(a, p) for a, p in zip(start, params))
    assert TALAN_FILES <= {p.name for p in (tmp_path / "checkpoint-2").iterdir()}


def test_the_callback_alone_writes_talan_into_a_stock_trainers_checkpoints(tmp_path, local_model):
    """Without the mixin: `TalanCheckpointCallback()` on TRL's own SFTTrainer writes TALAN's files into every
    checkpoint, and they hold the model's TALAN weights at that step."""
    from transformers import AutoTokenizer

    from talan.trainer import TalanCheckpointCallback

    model = patched(local_model)
    data = datasets.Dataset.from_list([{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(8)])
    args = trl.SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=2, save_steps=2,
                         per_device_train_batch_size=4, learning_rate=1e-2, disable_tqdm=True)
    trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=AutoTokenizer.from_pretrained(
        local_model), callbacks=[TalanCheckpointCallback()]).train()
    assert ADAPTER_FILES | TALAN_FILES <= {p.name for p in (tmp_path / "checkpoint-2").iterdir()}
    reloaded = talan.load_pretrained(patched(local_model, seed=1), tmp_path / "checkpoint-2")
    for trained, loaded in zip(talan.talan_parameters(model), talan.talan_parameters(reloaded)):
        assert torch.equal(trained, loaded)


def test_the_mixin_refuses_a_model_without_talan(tmp_path, local_model):
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(local_model), LoraConfig(r=4))
    with pytest.raises(ValueError, match="not patched with TALAN: call talan.patch"):
        sft_trainer(local_model, tmp_path, model=model)


def test_sft_trainer_resume_gives_the_uninterrupted_weights(tmp_path, local_model):
    """From a checkpoint folder, or with resume_from_checkpoint=True from the last one in the output directory (a
    directory with none is an error, not a fresh start)."""
    sft_trainer(local_model, tmp_path / "full").train()
    middle = tmp_path / "full" / "checkpoint-2"
    # a fresh model (other TALAN and LoRA initialisations): the checkpoint must bring every weight back
    sft_trainer(local_model, tmp_path / "resumed", model=patched(local_model, seed=1)).train(
        resume_from_checkpoint=str(middle))
    shutil.copytree(middle, tmp_path / "last" / "checkpoint-2")
    sft_trainer(local_model, tmp_path / "last", model=patched(local_model, seed=1)).train(resume_from_checkpoint=True)
    for name in ("talan_model.safetensors", "adapter_model.safetensors"):
        final = load_file(tmp_path / "full" / "checkpoint-4" / name)
        assert max_diff(final, load_file(tmp_path / "resumed" / "checkpoint-4" / name)) <= 1e-6, name
        assert max_diff(final, load_file(tmp_path / "last" / "checkpoint-4" / name)) <= 1e-6, name
        assert max_diff(final, load_file(middle / name)) > 1e-4, name  # the last 2 steps changed the weights
    with pytest.raises(ValueError, match="no checkpoint-\\* folder to resume from in"):
        sft_trainer(local_model, tmp_path / "empty").train(resume_from_checkpoint=True)


def test_padding_free_batches_restart_talans_memory_at_each_example(tmp_path, local_model):
    """TRL packs a padding-free batch into one row (position ids restart per example, no attention mask):
    each example's logits equal its own forward's."""
    trainer = sft_trainer(local_model, tmp_path, padding_free=True, max_length=None)
    model = open_gates(trainer.model.eval())
    examples = [trainer.train_dataset[i] for i in (3, 11, 25)]
    batch = trainer.data_collator(examples)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    with torch.no_grad():
        packed = model(**batch).logits[0]  # as the trainer calls it: labels, cu_seq_lens_* and seq_idx too
        start = 0
        for example in examples:
            ids = torch.tensor([example["input_ids"]])
            alone = model(input_ids=ids).logits[0]
            torch.testing.assert_close(packed[start:start + ids.shape[1]], alone, rtol=1e-5, atol=1e-5)
            start += ids.shape[1]
        assert start == packed.shape[0]
        with talan.disabled(model):  # the check can fail: TALAN changes these logits
            assert not torch.allclose(model(input_ids=ids).logits[0], alone, atol=1e-4)
