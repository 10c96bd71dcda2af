"""``predict`` writes one CSV file per run (``PredictionWriter``), through the real CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from qsd_lightning.callbacks import PredictionWriter

from .conftest import CONFIGS, REPO
from .data_builders import write_ptb, write_tsv
from .helpers import LM_CONFIG, LM_TINY, cli_subprocess

DIGITS = str(CONFIGS / "mlp_digits.yaml")
SST2 = str(CONFIGS / "rnn_sst2.yaml")
QUIET = ["--trainer.logger=false"]


def read_csv(path: Path) -> tuple[list[str], dict[str, list[float]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    return header, {key: [float(row[j]) for row in body] for j, key in enumerate(header)}


def prediction_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("predictions:")]


def fit_checkpoint(run_cli, *args) -> str:
    cli = run_cli("fit", *args, *QUIET, "--trainer.max_epochs=1")
    return cli.trainer.checkpoint_callback.last_model_path


def check_classifier_file(columns: dict, n: int, num_classes: int) -> torch.Tensor:
    assert sorted(columns["index"]) == list(range(n)) and columns["index"] == sorted(columns["index"])
    probs = torch.tensor([columns[f"probs_{j}"] for j in range(num_classes)]).T
    assert probs.shape == (n, num_classes)
    assert torch.allclose(probs.sum(1), torch.ones(n), atol=1e-6)
    assert torch.equal(torch.tensor(columns["pred"]).long(), probs.argmax(1))
    return probs


# ---------------------------------------------------------------- classifiers


def test_digits_predict_file_matches_test_and_is_never_overwritten(run_cli, tmp_path, capsys):
    ckpt = fit_checkpoint(run_cli, "--config", DIGITS, "--trainer.limit_train_batches=4")
    tested = run_cli("test", "--config", DIGITS, *QUIET, f"--ckpt_path={ckpt}").trainer.callback_metrics
    capsys.readouterr()

    cli = run_cli("predict", "--config", DIGITS, *QUIET, f"--ckpt_path={ckpt}")
    target = tmp_path / "predictions.csv"
    assert prediction_lines(capsys.readouterr().out) == [f"predictions: 359 rows -> {target}"]
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, PredictionWriter))
    assert writer.path == target and writer.rows == 359

    dm = cli.datamodule
    x, y = dm.splits["test"].tensors
    header, columns = read_csv(target)
    assert header == ["index", "pred", *[f"probs_{j}" for j in range(10)]]
    probs = check_classifier_file(columns, len(y), 10)  # 359 = the test split (predict serves it)
    index = torch.tensor(columns["index"]).long()
    accuracy = (torch.tensor(columns["pred"]).long() == y[index]).float().mean().item()
    assert accuracy == pytest.approx(tested["test/acc"].item(), abs=1e-6)
    model = cli.model.eval()
    with torch.no_grad():  # row i is sample index[i] of the predict set
        assert torch.allclose(model(x[index]).softmax(-1), probs, atol=1e-6)

    first = target.read_bytes()
    # a second predict (with the callback preset that replaces the whole list) takes the next name
    run_cli("predict", "--config", DIGITS, "--config", str(REPO / "callbacks" / "minimal.yaml"), *QUIET, f"--ckpt_path={ckpt}")
    assert prediction_lines(capsys.readouterr().out) == [f"predictions: 359 rows -> {tmp_path / 'predictions.1.csv'}"]
    assert target.read_bytes() == first and (tmp_path / "predictions.1.csv").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir() if "predictions" in p.name) == ["predictions.1.csv", "predictions.csv"]


def test_predict_writes_its_file_with_a_callback_list_that_has_no_writer(run_cli, tmp_path, capsys, monkeypatch):
    """A user's own callback list without a writer: the CLI adds one, predict is never silent."""
    ckpt = fit_checkpoint(run_cli, "--config", DIGITS, "--trainer.limit_train_batches=2")
    own = tmp_path / "own.yaml"
    own.write_text("trainer:\n  callbacks:\n    - class_path: qsd_lightning.callbacks.ActivationSparsity\n")
    capsys.readouterr()
    cli = run_cli("predict", "--config", DIGITS, "--config", str(own), *QUIET, f"--ckpt_path={ckpt}")
    assert prediction_lines(capsys.readouterr().out) == [f"predictions: 359 rows -> {tmp_path / 'predictions.csv'}"]
    assert sum(isinstance(cb, PredictionWriter) for cb in cli.trainer.callbacks) == 1


def test_sentiment_predict_rows_are_the_samples_of_their_index(run_cli, tmp_path):
    data = write_tsv(tmp_path / "sst2", test="labelled")
    args = ["--config", SST2, f"--data.data_dir={data}", "--data.batch_size=4", "--model.embedding_dim=8",
            "--model.hidden_size=8", "--data.min_freq=1"]
    ckpt = fit_checkpoint(run_cli, *args, "--trainer.limit_train_batches=3")
    tested = run_cli("test", *args, *QUIET, f"--ckpt_path={ckpt}").trainer.callback_metrics
    cli = run_cli("predict", *args, *QUIET, f"--ckpt_path={ckpt}")
    test_set = cli.datamodule.datasets["test"]
    _, columns = read_csv(tmp_path / "predictions.csv")
    probs = check_classifier_file(columns, len(test_set), 2)
    # batches come by length (bucketing), not in order: the index must still name the sample
    from qsd_lightning.data.sentiment import BucketBatchSampler

    assert [i for batch in BucketBatchSampler(test_set.lengths, 4, False) for i in batch] != list(range(len(test_set)))
    model = cli.model.eval()
    with torch.no_grad():
        for row, i in enumerate(columns["index"]):
            tokens, label = test_set[int(i)]
            alone = model(tokens.long()[None], torch.tensor([len(tokens)])).softmax(-1)[0]
            assert torch.allclose(alone, probs[row], atol=1e-5), (row, i)
    labels = test_set.labels[torch.tensor(columns["index"]).long()]
    accuracy = (torch.tensor(columns["pred"]).long() == labels).float().mean().item()
    assert accuracy == pytest.approx(tested["test/acc"].item(), abs=1e-6)


# ---------------------------------------------------------------- language model


def test_lstm_lm_predict_nll_matches_test_loss(run_cli, tmp_path):
    ptb_dir = write_ptb(tmp_path / "ptb")
    args = ["--config", str(LM_CONFIG), f"--data.data_dir={ptb_dir}", *LM_TINY]
    ckpt = fit_checkpoint(run_cli, *args, "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1")
    tested = run_cli("test", *args, *QUIET, f"--ckpt_path={ckpt}").trainer.callback_metrics
    cli = run_cli("predict", *args, *QUIET, f"--ckpt_path={ckpt}")
    header, columns = read_csv(tmp_path / "predictions.csv")
    assert header == ["index", "nll", "tokens", "ppl"]
    windows = cli.datamodule.windows("test")
    n = windows.data.shape[0] * len(windows)  # rows x windows
    assert columns["index"] == list(range(n))
    nll, tokens = torch.tensor(columns["nll"], dtype=torch.float64), torch.tensor(columns["tokens"], dtype=torch.float64)
    assert tokens.sum().item() == windows.data.shape[0] * (windows.data.shape[1] - 1)  # every target token once
    assert (nll.sum() / tokens.sum()).item() == pytest.approx(tested["test/loss"].item(), rel=1e-5)
    assert torch.allclose(torch.tensor(columns["ppl"], dtype=torch.float64), torch.exp(nll / tokens), rtol=1e-6)
    # index = text order: row r, window w of the test stream is sequence r * windows + w
    first_window = next(iter(windows))[1]
    assert tokens[: len(windows)].sum().item() == windows.data.shape[1] - 1
    assert columns["tokens"][0] == first_window.shape[1]


# ---------------------------------------------------------------- DDP


def test_ddp_two_processes_write_the_single_process_file(run_cli, tmp_path, capsys):
    ckpt = fit_checkpoint(run_cli, "--config", DIGITS, "--trainer.limit_train_batches=4")
    run_cli("predict", "--config", DIGITS, *QUIET, f"--ckpt_path={ckpt}")
    single = tmp_path / "predictions.csv"
    ddp_root = tmp_path / "ddp"
    proc = cli_subprocess(["predict", "--config", DIGITS, *QUIET, "--trainer.strategy=ddp", "--trainer.devices=2",
                           f"--trainer.default_root_dir={ddp_root}", f"--ckpt_path={ckpt}"], tmp_path)
    assert prediction_lines(proc.stdout) == [f"predictions: 359 rows -> {ddp_root / 'predictions.csv'}"]  # rank 0 only
    header, ddp = read_csv(ddp_root / "predictions.csv")  # 359 rows over 2 ranks: 180 + 179, none repeated
    header_single, one = read_csv(single)
    assert header == header_single and ddp["index"] == one["index"] == list(range(359))
    assert ddp["pred"] == one["pred"]
    for key in header[2:]:
        assert all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7) for a, b in zip(ddp[key], one[key])), key
    assert [p.name for p in ddp_root.iterdir() if p.suffix == ".tmp" or p.name.startswith(".")] == []


def test_ddp_lstm_lm_sequences_numbered_over_both_ranks(tmp_path):
    ptb_dir = write_ptb(tmp_path / "ptb")
    proc = cli_subprocess(["predict", "--config", str(LM_CONFIG), f"--data.data_dir={ptb_dir}", *LM_TINY, *QUIET,
                           "--trainer.strategy=ddp", "--trainer.devices=2", f"--trainer.default_root_dir={tmp_path}"], tmp_path)
    assert len(prediction_lines(proc.stdout)) == 1
    _, columns = read_csv(tmp_path / "predictions.csv")
    from qsd_lightning.data import PTBDataModule

    dm = PTBDataModule(str(ptb_dir), batch_size=2, bptt=5)
    dm.setup("predict")
    per_rank = len(dm.streams["test"]) // 2 // 2  # tokens per row: 2 ranks x 2 rows
    windows = -(-(per_rank - 1) // 5)
    assert columns["index"] == list(range(2 * 2 * windows))  # no rank's sequences collide
    assert sum(columns["tokens"]) == 2 * 2 * (per_rank - 1)


# ---------------------------------------------------------------- the writer alone


def test_writer_refuses_a_path_as_filename():
    with pytest.raises(ValueError, match="dirpath"):
        PredictionWriter(filename="sub/predictions.csv")


def test_indices_outside_a_trainer_count_full_batches():
    from qsd_lightning.callbacks.prediction import sample_indices, sequence_indices

    module = torch.nn.Linear(1, 1)
    assert sample_indices(module, 3, 0).tolist() == [0, 1, 2] and sample_indices(module, 2, 1).tolist() == [3, 4]
    assert sequence_indices(torch.nn.Linear(1, 1), 3, 2).tolist() == [6, 7, 8]


def test_merge_sorts_by_index_and_names_2d_columns():
    parts = [{0: {"index": torch.tensor([2, 0]), "p": torch.tensor([[0.2, 0.8], [0.0, 1.0]])}},
             {0: {"index": torch.tensor([1]), "p": torch.tensor([[0.5, 0.5]])}}]
    table = PredictionWriter._merge(parts)
    assert table["index"].tolist() == [0, 1, 2]
    header, columns = PredictionWriter()._header_and_columns(table)
    assert header == ["index", "p_0", "p_1"] and columns[1] == ["0", "0.5", "0.200000003"]
