"""Real-world files and arguments that used to trip the data readers.

Every file is written here as real tools write them (Excel/Notepad byte-order marks, CRLF,
Unicode separators inside sentences, Kaggle's MNIST names, macOS archive metadata ...). The
user's mistakes must fail at load, in one line that names the file (and line) and the fix.
"""

from __future__ import annotations

import json
import pickle
import pickletools
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qsd_lightning.cli import main as cli_entry
from qsd_lightning.data import CIFARDataModule, DigitsDataModule, MNISTDataModule, PTBDataModule, SentimentDataModule
from qsd_lightning.data.cifar import read_cifar
from qsd_lightning.data.idx import read_idx
from qsd_lightning.data.ptb import EOS, read_tokens
from qsd_lightning.errors import ConfigError, CorruptDataError

from .conftest import CONFIGS, REPO
from .data_builders import write_cifar_pickles, write_idx, write_tiny_mnist

BOM = "\ufeff"


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and "../shared" not in message, message
    return message


def rows(n: int, start: int = 0) -> list[tuple[str, int]]:
    words = ["great film", "awful plot", "loved it", "boring and dull", "superb acting", "hated the music"]
    return [(f"{words[i % len(words)]} number {i}", i % 2) for i in range(start, start + n)]


def write(path: Path, text: str, encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


def tsv(header: str, lines: list[str]) -> str:
    return header + "\n" + "".join(line + "\n" for line in lines)


# ---------------------------------------------------------------------- sentiment TSV (GLUE SST-2)


def test_tsv_sentences_keep_unicode_line_separators(tmp_path):
    """U+2028, U+2029, U+0085, form feed and vertical tab are not line ends in a TSV."""
    odd = ["line\u2028separator", "para\u2029graph", "next\x85line", "form\x0cfeed", "vertical\x0btab", "file\x1cseparator"]
    train = [f"{s} is great\t{i % 2}" for i, s in enumerate(odd)] + [f"{s}\t{y}" for s, y in rows(40)]
    write(tmp_path / "train.tsv", tsv("sentence\tlabel", train))
    raw = SentimentDataModule(str(tmp_path), format="tsv", min_freq=1, val_fraction=0.1)._read_raw()
    everything = [t for k in raw for t in raw[k][0]]
    assert len(everything) == 46
    assert {f"{s} is great" for s in odd} <= set(everything)


def test_tsv_excel_bom_crlf_and_label_first_test_file(tmp_path):
    """Excel/Notepad write a UTF-8 byte-order mark and CRLF; a labelled test.tsv whose first
    column is the label must be used as the test set, not silently ignored."""
    write(tmp_path / "train.tsv", tsv("sentence\tlabel", [f"{s}\t{y}" for s, y in rows(40)]), "utf-8-sig", "\r\n")
    write(tmp_path / "dev.tsv", tsv("sentence\tlabel", [f"{s}\t{y}" for s, y in rows(8, 40)]), "utf-8-sig", "\r\n")
    write(tmp_path / "test.tsv", tsv("label\tsentence", [f"{y}\t{s}" for s, y in rows(6, 50)]), "utf-8-sig", "\r\n")
    dm = SentimentDataModule(str(tmp_path), min_freq=1)
    dm.setup()
    assert [len(dm.datasets[k]) for k in ("train", "val", "test")] == [40, 8, 6]
    assert "test: test.tsv" in dm.split_note
    assert all(not t.startswith(BOM) and not t.endswith("\r") for t in dm.vocab.tokens)


def test_tsv_tab_inside_the_sentence_stays_in_the_text(tmp_path):
    write(tmp_path / "train.tsv", tsv("sentence\tlabel", ["a tab\there and\tthere\t1"] + [f"{s}\t{y}" for s, y in rows(30)]))
    write(tmp_path / "test.tsv", tsv("index\tsentence", ["0\tglue test\twith a tab"]))  # GLUE: no labels
    dm = SentimentDataModule(str(tmp_path), format="tsv", min_freq=1)
    raw = dm._read_raw()
    everything = [t for k in raw for t in raw[k][0]]
    assert "a tab\there and\tthere" in everything and len(everything) == 31


@pytest.mark.parametrize(
    "label, shown",
    [("²", "label '²'"), ("١", "label '١'"), ("2", "label '2'"), ("-1", "label '-1'"), ("", "empty label"), ("1.0", "label '1.0'")],
    ids=["superscript", "arabic-indic", "out-of-range", "negative", "empty", "float"],
)
def test_bad_labels_refused_at_load_with_file_and_line(tmp_path, label, shown):
    lines = [f"{s}\t{y}" for s, y in rows(30)]
    lines[4] = f"an odd row\t{label}"
    path = write(tmp_path / "train.tsv", tsv("sentence\tlabel", lines))
    with pytest.raises(CorruptDataError) as err:
        SentimentDataModule(str(tmp_path), format="tsv").prepare_data()
    message = one_line(err)
    assert message.startswith(f"{path}:6: {shown} is not one of the 2 classes 0..1") and "--data.num_classes" in message


def test_more_classes_with_num_classes(tmp_path):
    write(tmp_path / "train.tsv", tsv("sentence\tlabel", [f"{s}\t{i % 5}" for i, (s, _) in enumerate(rows(50))]))
    dm = SentimentDataModule(str(tmp_path), format="tsv", num_classes=5, min_freq=1)
    dm.setup()
    assert dm.num_classes == 5 and int(dm.datasets["train"].labels.max()) == 4


def test_tsv_in_another_encoding_names_file_and_line(tmp_path):
    path = write(tmp_path / "train.tsv", tsv("sentence\tlabel", ["fine\t1", "café crème\t0", "more\t1"]), "cp1252")
    with pytest.raises(CorruptDataError) as err:
        SentimentDataModule(str(tmp_path)).prepare_data()
    assert one_line(err).startswith(f"{path}:3 is not valid UTF-8 (byte 0xe9")
    write(tmp_path / "train.tsv", tsv("sentence\tlabel", ["fine\t1"]), "utf-16")  # Excel's "Unicode Text"
    with pytest.raises(CorruptDataError, match="is UTF-16 text, not UTF-8"):
        SentimentDataModule(str(tmp_path)).prepare_data()


def test_tsv_that_is_a_directory(tmp_path):
    (tmp_path / "train.tsv").mkdir()
    with pytest.raises(CorruptDataError) as err:
        SentimentDataModule(str(tmp_path)).prepare_data()
    assert one_line(err) == f"{tmp_path / 'train.tsv'} is a directory, expected a tab-separated text file"


# ---------------------------------------------------------------------- sentiment aclImdb


def write_reviews(root: Path, per_folder: int = 6, bom: bool = False) -> Path:
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            for i, (text, _) in enumerate(rows(per_folder)):
                review = f"{label} review {i}: {text}.<br /><br />The end."
                write(root / "aclImdb" / split / label / f"{i}_{7 if label == 'pos' else 2}.txt", review,
                      "utf-8-sig" if bom else "utf-8", "\r\n" if bom else "\n")
    return root


def test_aclimdb_reviews_with_bom_add_no_bom_token(tmp_path):
    write_reviews(tmp_path, bom=True)
    dm = SentimentDataModule(str(tmp_path), format="aclimdb", min_freq=1)
    dm.setup()
    assert all(BOM not in token for token in dm.vocab.tokens)


APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\x00\x00\x00\t\xff\xfe\x80\x81"


def test_macos_metadata_files_are_not_reviews(tmp_path):
    """Archives made on a Mac carry ``._name`` AppleDouble files (binary) beside every file."""
    write_reviews(tmp_path / "tree")
    (tmp_path / "tree" / "aclImdb" / "train" / "pos" / "._0_7.txt").write_bytes(APPLEDOUBLE)
    dm = SentimentDataModule(str(tmp_path / "tree"), format="aclimdb", min_freq=1)
    dm.setup()
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 12
    archive = tmp_path / "archive" / "aclImdb_v1.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "aclImdb", arcname="aclImdb")
        tar.add(tmp_path / "tree" / "aclImdb" / "train" / "pos" / "._0_7.txt", arcname="__MACOSX/aclImdb/test/neg/._0_2.txt")
    dm = SentimentDataModule(str(archive.parent), format="aclimdb", min_freq=1)
    dm.setup()
    assert len(dm.datasets["test"]) == 12


# ---------------------------------------------------------------------- MNIST IDX


@pytest.fixture
def mnist(tmp_path) -> Path:
    write_tiny_mnist(tmp_path / "mnist", n_train=60, n_test=20, gz=False)
    return tmp_path / "mnist"


def load_mnist(folder: Path, **kwargs):
    dm = MNISTDataModule(data_dir=str(folder), val_size=kwargs.pop("val_size", 10), download=False, **kwargs)
    dm.setup()
    return dm


def test_mnist_label_outside_0_9(mnist):
    labels = np.random.default_rng(0).integers(0, 10, 60)
    labels[17] = 12
    write_idx(mnist / "train-labels-idx1-ubyte", labels)
    with pytest.raises(CorruptDataError) as err:
        load_mnist(mnist)
    assert one_line(err).startswith(f"{mnist / 'train-labels-idx1-ubyte'}: label 12 at index 17 is outside 0-9")


def test_mnist_files_of_the_wrong_kind(mnist):
    images, labels = mnist / "t10k-images-idx3-ubyte", mnist / "t10k-labels-idx1-ubyte"
    original_images, original_labels = images.read_bytes(), labels.read_bytes()
    labels.write_bytes(original_images)  # images given as labels
    with pytest.raises(CorruptDataError) as err:
        load_mnist(mnist)
    assert one_line(err).startswith(f"{labels} is not an MNIST labels file (an images file?)")
    labels.write_bytes(original_labels)
    write_idx(images, np.zeros((20, 14, 14)))  # wrong image size
    with pytest.raises(CorruptDataError, match=r"is not an MNIST images file: it holds uint8 \[20x14x14\]"):
        load_mnist(mnist)
    write_idx(images, np.zeros((20, 28, 28, 1)))  # wrong number of dimensions
    with pytest.raises(CorruptDataError, match=r"t10k-images-idx3-ubyte is not an MNIST images file"):
        load_mnist(mnist)
    write_idx(images, np.zeros((19, 28, 28)))  # one image short of the labels
    with pytest.raises(CorruptDataError) as err:
        load_mnist(mnist)
    assert one_line(err) == (f"{images} holds 19 images but {labels} holds 20 labels: files of different data sets? "
                             "copy a matching pair")


def test_mnist_empty_file_and_oversized_header(mnist):
    (mnist / "train-labels-idx1-ubyte").write_bytes(b"")
    with pytest.raises(CorruptDataError, match=r"train-labels-idx1-ubyte is not an IDX file \(bad magic number\) \(the file is empty\)"):
        load_mnist(mnist)
    path = mnist / "big.idx"
    write_idx(path, np.zeros((100, 10)))
    with pytest.raises(CorruptDataError, match=r"declares an array of shape \(100, 10\) \(1000 bytes, more than 999\)"):
        read_idx(path, max_bytes=999)


def test_mnist_kaggle_names_and_folders_named_like_files(tmp_path):
    """Kaggle's MNIST: ``train-images.idx3-ubyte``, each inside a folder named ``train-images-idx3-ubyte``."""
    write_tiny_mnist(tmp_path / "flat", n_train=30, n_test=10, gz=False)
    for file in (tmp_path / "flat").iterdir():
        folder = tmp_path / "kaggle" / file.name
        folder.mkdir(parents=True)
        file.rename(folder / file.name.replace("-idx", ".idx"))
    dm = load_mnist(tmp_path / "kaggle", val_size=5)
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [25, 5, 10]


@pytest.mark.parametrize("val_size", [60, 61, 10**6])
def test_mnist_val_size_not_below_training_size(mnist, val_size):
    with pytest.raises(ConfigError) as err:
        load_mnist(mnist, val_size=val_size)
    assert one_line(err) == (f"--data.val_size must be less than the 60 training examples in {mnist} (got {val_size}): "
                             "lower --data.val_size")


# ---------------------------------------------------------------------- CIFAR pickles

MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from qsd_lightning.data.cifar import read_cifar
    from qsd_lightning.errors import CorruptDataError
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        read_cifar(sys.argv[1], "cifar10")
        outcome = "read"
    except CorruptDataError as err:
        outcome = "refused: " + str(err)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"outcome": outcome, "extra_kib": after - before}))
    """
)


def tiny_cifar(root: Path, n: int = 20) -> Path:
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % 10)
    return write_cifar_pickles(root, "cifar10", data, data)


def test_cifar_memo_bomb_refused_with_small_memory(tmp_path):
    """86 kB naming one 3,072-number row 20,000 times (pickle memo: BINGET) used to become a
    480 MB int64 array before the dtype check refused it."""
    folder = tiny_cifar(tmp_path)
    row = [7] * 3072
    bomb = {"batch_label": "training batch 1 of 5", "labels": [0] * 20000, "data": [row] * 20000, "filenames": []}
    raw = pickle.dumps(bomb, protocol=2)  # the pickler memoises `row`: every repeat is a 2-byte BINGET
    assert len(raw) < 100_000 and sum(op.name == "BINGET" for op, _, _ in pickletools.genops(raw)) >= 19_999
    (folder / "data_batch_1").write_bytes(raw)
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["extra_kib"] < 100 * 1024, result  # far below the 480 MB the file describes
    assert result["outcome"].startswith(f"refused: cannot read CIFAR batch {folder / 'data_batch_1'}: it describes objects of more than")
    assert "\n" not in result["outcome"]


def test_cifar_pickle_cycles_and_foreign_labels(tmp_path):
    folder = tiny_cifar(tmp_path)
    loop: list = []
    loop.append(loop)
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": loop}, protocol=2))
    with pytest.raises(CorruptDataError, match=r"data_batch_2: UnpicklingError: an object that contains itself"):
        read_cifar(tmp_path)
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": ["cat", "dog"]}, protocol=2))
    with pytest.raises(CorruptDataError) as err:
        read_cifar(tmp_path)
    assert one_line(err) == f"{folder / 'data_batch_2'}: 'labels' is not a list of integer labels"


def test_cifar_val_size_and_train_size_against_the_data(tmp_path):
    tiny_cifar(tmp_path)  # 20 training images
    with pytest.raises(ConfigError) as err:
        CIFARDataModule(str(tmp_path), val_size=20, download=False).setup()
    assert one_line(err).startswith("--data.val_size must be less than the 20 training examples in pickle ")
    with pytest.raises(ConfigError, match=r"^--data.train_size 16 is more than the 15 training images left"):
        CIFARDataModule(str(tmp_path), val_size=5, train_size=16, download=False).setup()


# ---------------------------------------------------------------------- PTB text


def ptb_lines(n: int, offset: int = 0) -> list[str]:
    words = "the cat sat on a mat and N dogs ran to <unk> house".split()
    return [" " + " ".join(words[(i + j) % len(words)] for j in range(5 + i % 4)) + " " for i in range(offset, offset + n)]


def write_ptb(folder: Path, encoding: str = "utf-8", newline: str = "\n") -> Path:
    for name, n, offset in (("train", 60, 0), ("valid", 12, 3), ("test", 12, 7)):
        write(folder / f"ptb.{name}.txt", "".join(line + "\n" for line in ptb_lines(n, offset)), encoding, newline)
    return folder


def test_ptb_bom_crlf_and_unicode_separators(tmp_path):
    plain = write_ptb(tmp_path / "plain")
    excel = write_ptb(tmp_path / "excel", "utf-8-sig", "\r\n")
    odd = tmp_path / "odd" / "ptb.train.txt"
    write(odd, "".join(line.replace(" on ", " on\u2028").replace(" a ", "\x85a ") + "\n" for line in ptb_lines(60)))
    assert read_tokens(excel / "ptb.train.txt") == read_tokens(plain / "ptb.train.txt")
    assert read_tokens(odd) == read_tokens(plain / "ptb.train.txt")  # U+2028, U+0085 separate words, not lines
    assert read_tokens(plain / "ptb.train.txt").count(EOS) == 60
    assert PTBDataModule(str(excel), save_vocab=False).vocab_size == PTBDataModule(str(plain), save_vocab=False).vocab_size


def test_ptb_bad_text_names_file_and_line(tmp_path):
    folder = write_ptb(tmp_path)
    path = folder / "ptb.valid.txt"
    path.write_bytes(b" the cat \n sat on \n caf\xe9 \n")
    with pytest.raises(CorruptDataError) as err:
        PTBDataModule(str(folder)).setup("fit")
    assert one_line(err).startswith(f"{path}:3 is not UTF-8 text (byte 0xe9 at offset 23)")


def test_ptb_directory_where_a_file_should_be(tmp_path):
    folder = write_ptb(tmp_path)
    (folder / "ptb.test.txt").unlink()
    (folder / "ptb.test.txt").mkdir()
    with pytest.raises(CorruptDataError) as err:
        PTBDataModule(str(folder)).prepare_data()
    assert one_line(err) == f"{folder / 'ptb.test.txt'} is a directory, expected PTB-format text (one sentence a line)"


def test_ptb_batch_size_too_large_for_the_split(tmp_path):
    folder = write_ptb(tmp_path)  # valid: about 90 tokens
    dm = PTBDataModule(str(folder), batch_size=4, eval_batch_size=60, save_vocab=False)
    dm.setup("fit")
    dm.train_dataloader()
    with pytest.raises(ConfigError) as err:
        dm.val_dataloader()
    assert one_line(err).startswith(f"--data.eval_batch_size 60 is too large for {folder / 'ptb.valid.txt'}: its ")
    with pytest.raises(ConfigError, match=r"^--data.batch_size 400 is too large for .*ptb.train.txt"):
        PTBDataModule(str(folder), batch_size=400, save_vocab=False).train_dataloader()


# ---------------------------------------------------------------------- arguments


BAD_ARGS = [
    (DigitsDataModule, {"batch_size": 0}, "--data.batch_size must be >= 1 (got 0)"),
    (DigitsDataModule, {"num_workers": -1}, "--data.num_workers must be >= 0 (got -1)"),
    (DigitsDataModule, {"val_fraction": 1.5}, "--data.val_fraction must be in (0, 1) (got 1.5)"),
    (MNISTDataModule, {"batch_size": -3}, "--data.batch_size must be >= 1 (got -3)"),
    (MNISTDataModule, {"val_size": 0}, "--data.val_size must be >= 1 (got 0)"),
    (MNISTDataModule, {"num_workers": -2}, "--data.num_workers must be >= 0 (got -2)"),
    (CIFARDataModule, {"batch_size": 0}, "--data.batch_size must be >= 1 (got 0)"),
    (CIFARDataModule, {"val_size": -1}, "--data.val_size must be >= 1 (got -1)"),
    (CIFARDataModule, {"num_workers": -1}, "--data.num_workers must be >= 0 (got -1)"),
    (SentimentDataModule, {"batch_size": 0}, "--data.batch_size must be >= 1 (got 0)"),
    (SentimentDataModule, {"num_workers": -1}, "--data.num_workers must be >= 0 (got -1)"),
    (SentimentDataModule, {"val_fraction": 0.5}, "--data.val_fraction must be in (0, 0.5) (got 0.5)"),
    (SentimentDataModule, {"num_classes": 1}, "--data.num_classes must be >= 2 (got 1)"),
    (PTBDataModule, {"batch_size": 0}, "--data.batch_size must be >= 1 (got 0)"),
    (PTBDataModule, {"eval_batch_size": 0}, "--data.eval_batch_size must be >= 1 or null (got 0)"),
    (PTBDataModule, {"bptt": 0}, "--data.bptt must be >= 1 (got 0)"),
]


@pytest.mark.parametrize("cls, kwargs, message", BAD_ARGS, ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _ in BAD_ARGS])
def test_bad_arguments_refused_at_construction(cls, kwargs, message):
    with pytest.raises(ConfigError) as err:
        cls(**kwargs)
    assert one_line(err) == message


def test_digits_fractions_that_leave_no_training_data():
    dm = DigitsDataModule(val_fraction=0.6, test_fraction=0.4)
    with pytest.raises(ConfigError) as err:
        dm.setup()
    assert one_line(err) == "--data.val_fraction + --data.test_fraction must be < 1 to leave training data (got 0.6 + 0.4)"


CLI_BAD = [
    ("mlp_digits.yaml", ["--data.batch_size", "0"], "--data.batch_size must be an integer > 0 (got 0)"),
    ("mlp_digits.yaml", ["--data.num_workers", "-1"], "--data.num_workers must be an integer >= 0 (got -1)"),
    ("mlp_mnist.yaml", ["--data.val_size", "0", "--data.download=false"], "--data.val_size must be an integer > 0 (got 0)"),
    ("cnn_cifar10.yaml", ["--data.batch_size", "-5", "--data.download=false"], "--data.batch_size must be an integer > 0 (got -5)"),
    ("cnn_cifar10.yaml", ["--data.train_size", "0", "--data.download=false"], "--data.train_size"),
    ("rnn_sst2.yaml", ["--data.batch_size", "0"], "--data.batch_size must be an integer > 0 (got 0)"),
    ("rnn_sst2.yaml", ["--data.val_fraction", "0.7"], "--data.val_fraction must be a fraction in (0, 0.5) (got 0.7)"),
    ("lstm_ptb.yaml", ["--data.bptt", "0"], "--data.bptt must be an integer > 0 (got 0)"),
]


@pytest.mark.parametrize("config, args, message", CLI_BAD, ids=[f"{c}-{a[0]}" for c, a, _ in CLI_BAD])
def test_bad_arguments_refused_by_the_cli_in_one_line(config, args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_entry(["fit", "--config", str(CONFIGS / config), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err[-2000:]
    assert err.startswith(f"error: {message}") and "Traceback" not in err


def test_val_size_too_large_through_the_cli(mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_entry(["fit", "--config", str(CONFIGS / "mlp_mnist.yaml"), f"--data.data_dir={mnist}", "--data.val_size=60",
                   "--data.download=false", "--trainer.logger=false", "--trainer.fast_dev_run=true",
                   "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1, err[-2000:]
    assert err.strip().splitlines()[-1] == (f"error: --data.val_size must be less than the 60 training examples in {mnist} "
                                            "(got 60): lower --data.val_size")


@pytest.mark.parametrize(
    "make",
    [
        lambda d: MNISTDataModule(str(d), download=True),
        lambda d: CIFARDataModule(str(d), download=True),
        lambda d: SentimentDataModule(str(d), download=True),
        lambda d: PTBDataModule(str(d)),
    ],
    ids=["mnist", "cifar", "sentiment", "ptb"],
)
def test_data_dir_that_is_a_file(tmp_path, make):
    """``--data.data_dir`` given the downloaded archive itself: say so, try no download."""
    archive = tmp_path / "aclImdb_v1.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + bytes(100))
    with pytest.raises(ConfigError) as err:
        make(archive).prepare_data()
    assert one_line(err) == (f"--data.data_dir {archive} is a file, not a directory: set it to the folder that holds "
                             f"the file ({tmp_path})")
