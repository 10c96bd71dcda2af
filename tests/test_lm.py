"""LSTM language model on PTB-format text: data stream, TBPTT state, metrics, CLI, errors."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml

from qsd_lightning.data import CorruptDataError, DataNotFoundError, PTBDataModule
from qsd_lightning.data import ptb
from qsd_lightning.data.ptb import BPTTWindows, batchify, build_vocab, encode, read_tokens, shard
from qsd_lightning.models import LSTMLanguageModel
from qsd_lightning.regularisers import QSD, Dropout, NoRegulariser, SpatialDropout, WeightDrop
from qsd_lightning.tasks import LanguageModel
from qsd_lightning.tasks.language_model import VocabularyMismatchError

from .helpers import LM_CONFIG as CONFIG, LM_TINY as TINY, VOCAB


def fit_args(ptb_dir, *extra):
    return ["--config", str(CONFIG), f"--data.data_dir={ptb_dir}", *TINY, *extra]


# ---------------------------------------------------------------- pure functions


def test_batchify_contiguous_rows():
    data = batchify(torch.arange(23), 4)
    assert data.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]
    with pytest.raises(ValueError, match="too short"):
        batchify(torch.arange(7), 4)


def test_shard_is_contiguous_and_equal():
    stream = torch.arange(11)
    parts = [shard(stream, r, 3) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert torch.equal(shard(stream, 0, 1), stream)
    with pytest.raises(ValueError):
        shard(stream, 3, 3)


def test_windows_in_order_with_shifted_targets():
    data = torch.arange(24).view(2, 12)
    windows = BPTTWindows(data, 5)
    got = list(windows)
    assert len(got) == len(windows) == 3
    assert [x.shape[1] for x, _ in got] == [5, 5, 1]  # last window shorter
    assert torch.equal(torch.cat([x for x, _ in got], 1), data[:, :-1])
    assert torch.equal(torch.cat([y for _, y in got], 1), data[:, 1:])


def test_vocab_is_deterministic_and_encode():
    tokens = ["b", "a", "b", "<eos>", "c", "a", "<eos>", "b"]
    vocab = build_vocab(tokens)
    assert vocab == ["b", "<eos>", "a", "c"]  # by count, then alphabetically
    assert build_vocab(list(reversed(tokens))) == vocab
    assert encode(["a", "c"], vocab).tolist() == [2, 3]
    with pytest.raises(CorruptDataError, match="valid.txt.*'zzz'"):
        encode(["zzz"], vocab, "valid.txt")
    assert encode(["zzz"], vocab + ["<unk>"]).tolist() == [4]


def test_datamodule_stream_vocab_and_ddp_shards(ptb_dir):
    dm = PTBDataModule(str(ptb_dir), batch_size=2, bptt=4)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab_size == VOCAB
    assert (ptb_dir / "vocab.txt").read_text().split("\n")[:-1] == dm.vocab
    tokens = read_tokens(ptb_dir / "ptb.train.txt")
    assert torch.equal(dm.streams["train"], encode(tokens, dm.vocab))
    assert tokens.count("<eos>") == 61
    # one rank: the whole stream; two ranks: each a contiguous half, same number of batches
    whole = dm.windows("train").data
    assert torch.equal(whole, batchify(dm.streams["train"], 2))
    halves = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        halves.append(dm.windows("train"))
    n = len(dm.streams["train"]) // 2
    assert torch.equal(halves[1].data.flatten(), dm.streams["train"][n : n + halves[1].data.numel()])
    assert len(halves[0]) == len(halves[1])
    loader = dm.train_dataloader()
    assert loader.batch_size is None and not isinstance(loader.sampler, torch.utils.data.RandomSampler)


# ---------------------------------------------------------------- model and TBPTT


def tiny_model(**kw) -> LanguageModel:
    defaults = dict(vocab_size=VOCAB, embedding_size=8, hidden_size=8, num_layers=2)
    return LanguageModel(**{**defaults, **kw})


def test_hidden_state_is_carried_and_reset():
    torch.manual_seed(0)
    model = tiny_model().eval()
    batch = (torch.randint(0, VOCAB, (3, 6)), torch.randint(0, VOCAB, (3, 6)))
    with torch.no_grad():
        first = model.loss_and_carry(batch, "val")
        carried = model.loss_and_carry(batch, "val")
        model.reset_state("val")
        fresh = model.loss_and_carry(batch, "val")
    assert carried != first  # the state from the first window changed the second
    assert fresh == first
    assert all(not h.requires_grad for h, _ in model._states["val"])
    assert model._states["train"] is None  # stages keep their own state


def test_training_state_detached_between_steps():
    model = tiny_model().train()
    batch = (torch.randint(0, VOCAB, (2, 5)), torch.randint(0, VOCAB, (2, 5)))
    for _ in range(2):  # would fail with "backward through the graph a second time" if not detached
        model.loss_and_carry(batch, "train").backward()


def test_loss_sum_over_time_scales_the_objective():
    model = tiny_model(loss_sum_over_time=True).eval()  # eval: no masks, same loss twice
    model.log = lambda *a, **k: None
    batch = (torch.randint(0, VOCAB, (2, 6)), torch.randint(0, VOCAB, (2, 6)))
    objective = model.training_step(batch, 0)
    model.reset_state()
    assert objective.item() == pytest.approx(6 * model.loss_and_carry(batch, "train").item(), rel=1e-6)


def test_perplexity_is_exp_of_token_weighted_mean():
    model = tiny_model()
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    metric = model.eval_loss["val"]
    metric.update(torch.tensor(1.0), 10)  # a window of 10 tokens with mean loss 1
    metric.update(torch.tensor(2.0), 30)  # and one of 30 tokens with mean loss 2
    model._eval_epoch_end("val")
    assert logged["val/loss"] == pytest.approx(1.75)
    assert logged["val/ppl"] == pytest.approx(math.exp(1.75))


def test_validate_matches_manual_perplexity(ptb_dir, run_cli):
    cli = run_cli("fit", *fit_args(ptb_dir, "--trainer.fast_dev_run=2"))
    model, dm = cli.model, cli.datamodule
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    result = trainer.validate(model, dm, verbose=False)[0]
    model.eval()
    total, tokens, state = 0.0, 0, None
    with torch.no_grad():
        for x, y in dm.windows("valid"):
            logits, state = model(x, state)
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            tokens += y.numel()
    assert result["val/loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert result["val/ppl"] == pytest.approx(math.exp(total / tokens), rel=1e-5)


def test_model_sites_locked_and_tying():
    model = tiny_model(regulariser=QSD(0.5), locked=True, hidden_rate=0.2, output_rate=0.0, weight_drop_rate=0.3)
    net = model.net
    assert isinstance(net.embedding_reg, QSD) and net.embedding_reg.locked_dims == (1,)
    assert net.hidden_regs[0].rate == 0.2 and net.hidden_regs[0].unit_dims == (-1,)
    assert isinstance(net.output_reg, torch.nn.Identity)
    assert isinstance(net.lstms[1].parametrizations.weight_hh_l0[0], WeightDrop)
    own = tiny_model(hidden_regulariser=Dropout(0.1)).net
    assert type(own.hidden_regs[0]) is Dropout and own.hidden_regs[0].rate == 0.1 and isinstance(own.embedding_reg, Dropout)
    assert isinstance(tiny_model(regulariser=NoRegulariser(), locked=True).net.hidden_regs[0], torch.nn.Identity)
    with pytest.raises(ValueError, match="locked=true needs"):
        tiny_model(regulariser=SpatialDropout(0.5), locked=True)
    tied = LSTMLanguageModel(VOCAB, 8, 8, 1, tie_weights=True)
    assert tied.decoder.weight is tied.embedding.weight
    with pytest.raises(ValueError, match="tie_weights"):
        LSTMLanguageModel(VOCAB, 8, 6, tie_weights=True)


# ---------------------------------------------------------------- CLI


def test_config_states_zaremba_medium(capsys):
    from qsd_lightning.cli import cli_main

    with pytest.raises(SystemExit):  # the config as the CLI composes it (configs/defaults included)
        cli_main(["--config", str(CONFIG), "--print_config"], run=False)
    cfg = yaml.safe_load(capsys.readouterr().out)
    args = cfg["model"]["init_args"]
    assert args["vocab_size"] == 10000 and args["hidden_size"] == 650 and args["num_layers"] == 2
    assert args["loss_sum_over_time"] is True and args["optimizer"]["init_args"]["lr"] == 1.0
    assert cfg["trainer"]["gradient_clip_val"] == 5.0 and cfg["trainer"]["max_epochs"] == 39
    assert cfg["data"]["init_args"]["data_dir"] == "data/ptb"


def test_fit_fast_dev_run(ptb_dir, run_cli):
    cli = run_cli("fit", *fit_args(ptb_dir, "--trainer.fast_dev_run=3"))
    metrics = cli.trainer.callback_metrics
    assert {"train/loss", "val/loss", "val/ppl"} <= set(metrics)
    assert metrics["val/ppl"].item() == pytest.approx(math.exp(metrics["val/loss"].item()), rel=1e-5)
    assert cli.model._states["train"] is not None


def test_fit_qsd_locked_weight_drop_then_test(ptb_dir, run_cli):
    cli = run_cli(
        "fit",
        *fit_args(ptb_dir, "--trainer.fast_dev_run=2", "--model.regulariser=qsd", "--model.regulariser.gamma=8",
                  "--model.locked=true", "--model.weight_drop_rate=0.3", "--model.weight_drop_regulariser=qsd",
                  "--model.word_dropout_rate=0.1"),
    )
    net = cli.model.net
    assert isinstance(net.hidden_regs[0], QSD) and net.hidden_regs[0].gamma == 8.0 and net.hidden_regs[0].locked_dims == (1,)
    assert net.hidden_regs[0].steps_taken == 2
    assert isinstance(net.lstms[0].parametrizations.weight_hh_l0[0], QSD)
    result = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    assert result["test/ppl"] == pytest.approx(math.exp(result["test/loss"]), rel=1e-5)


def test_vocab_size_mismatch(ptb_dir, run_cli):
    with pytest.raises(VocabularyMismatchError, match=f"--model.vocab_size {VOCAB}"):
        run_cli("fit", *fit_args(ptb_dir, "--trainer.fast_dev_run=1", "--model.vocab_size=50"))


# ---------------------------------------------------------------- errors


def test_offline_without_files_fails_fast(tmp_path, monkeypatch):
    empty = tmp_path / "nothing"
    for source in ("auto", "hf", "files"):
        start = time.monotonic()
        with pytest.raises(DataNotFoundError) as err:
            PTBDataModule(str(empty), source=source).prepare_data()
        assert time.monotonic() - start < 5
        message = str(err.value)
        assert str(empty.resolve()) in message and "ptb.train.txt" in message and "--data.data_dir" in message
        assert "shared" not in message  # library messages never name the project's sibling data folder
    # no offline flag, no network: a quick probe, no retries
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(ptb, "_reachable", lambda *a, **k: False)
    with pytest.raises(DataNotFoundError, match="unreachable"):
        PTBDataModule(str(empty)).prepare_data()


def test_offline_error_through_cli(tmp_path, run_cli):
    with pytest.raises(DataNotFoundError, match="ptb.valid.txt"):
        run_cli("fit", "--config", str(CONFIG), f"--data.data_dir={tmp_path / 'none'}", "--trainer.fast_dev_run=1")


@pytest.mark.parametrize(
    "content, match",
    [
        (bytes(range(256)) * 4, "not UTF-8"),
        (b"\xff\xfe the cat \n", "not UTF-8"),
        (b" the cat\x00\x01\x02 sat \n", "control byte"),
        (b"\n\n", "no words"),
    ],
)
def test_corrupt_file(ptb_dir, content, match):
    bad = ptb_dir / "ptb.valid.txt"
    bad.write_bytes(content)
    with pytest.raises(CorruptDataError, match=match) as err:
        PTBDataModule(str(ptb_dir)).setup("fit")
    assert str(bad) in str(err.value)
