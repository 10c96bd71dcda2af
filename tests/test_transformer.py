"""Causal Transformer language model: causality, tying, regulariser sites, shared attention code, CLI."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from qsd_lightning.errors import ConfigError
from qsd_lightning.models import TransformerLanguageModel
from qsd_lightning.regularisers import QSD, Dropout, NoRegulariser, replace_dropout
from qsd_lightning.regularisers import attention as attention_code
from qsd_lightning.tasks import TransformerLM
from qsd_lightning.tasks.transformer_lm import SITES, warmup_cosine

from .conftest import CONFIGS
from .helpers import TRANSFORMER_CONFIG as CONFIG, TRANSFORMER_TINY as TINY, VOCAB


def tiny(**kw) -> TransformerLM:
    defaults = dict(vocab_size=VOCAB, d_model=8, num_heads=2, num_layers=2, d_ff=16, context_length=8)
    return TransformerLM(**{**defaults, **kw})


def regularisers_by_site(net: TransformerLanguageModel) -> dict[str, list[nn.Module]]:
    return {
        "embedding": [net.embedding_reg],
        "attention": [b.attention.attention_reg for b in net.blocks],
        "residual": [m for b in net.blocks for m in (b.attention_residual_reg, b.mlp_residual_reg)],
        "mlp": [b.mlp_reg for b in net.blocks],
        "output": [net.output_reg],
    }


# ---------------------------------------------------------------- the network


def test_constructible_in_plain_python_with_defaults():
    net = TransformerLanguageModel(vocab_size=20)
    assert net(torch.randint(0, 20, (2, 5))).shape == (2, 5, 20)
    model = TransformerLM()
    assert model.net.vocab_size == 10000 and len(model.net.blocks) == 4
    assert model.net.decoder.weight is model.net.token_embedding.weight  # tied by default
    assert all(type(m) is Dropout and m.rate == 0.1 for ms in regularisers_by_site(model.net).values() for m in ms)


def test_causal_in_eval_and_training_masks_do_not_leak():
    torch.manual_seed(0)
    model = tiny(regulariser=QSD(0.3)).eval()
    tokens = torch.randint(0, VOCAB, (3, 8))
    for t in range(7):
        changed = tokens.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % VOCAB
        with torch.no_grad():
            a, b = model(tokens), model(changed)
        torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])
    # in training too (same masks): gradients of position t reach no later input
    model.train()
    emb = model.net.token_embedding
    x = emb(tokens).detach().requires_grad_(True)
    net = model.net
    h = net.embedding_reg(x + net.position_embedding(torch.arange(8)))
    for block in net.blocks:
        h = block(h)
    h[:, 3].sum().backward()
    assert x.grad[:, 4:].abs().sum() == 0 and x.grad[:, :4].abs().sum() > 0


def test_weight_tying():
    tied = TransformerLanguageModel(VOCAB, d_model=8, num_heads=2, num_layers=1)
    assert tied.decoder.weight is tied.token_embedding.weight
    assert sum(p.numel() for p in tied.parameters()) < sum(p.numel() for p in TransformerLanguageModel(
        VOCAB, d_model=8, num_heads=2, num_layers=1, tie_weights=False).parameters())
    untied = TransformerLanguageModel(VOCAB, d_model=8, num_heads=2, num_layers=1, tie_weights=False)
    assert untied.decoder.weight is not untied.token_embedding.weight
    model = tiny()
    model.net.decoder.weight.data[0, 0] = 5.0
    assert model.net.token_embedding.weight[0, 0] == 5.0


def test_every_site_is_the_regulariser_at_its_rate_and_qsd_fires_everywhere():
    model = tiny(regulariser=QSD(0.3, gamma=8.0))
    sites = regularisers_by_site(model.net)
    assert set(sites) == set(SITES)
    for name, modules in sites.items():
        for m in modules:
            assert type(m) is QSD and m.rate == 0.3 and m.gamma == 8.0, (name, m)
            m.collect_statistics = True
    assert sites["attention"][0].unit_dims is None  # units: (head, query, key)
    model.train()
    model.token_nll((torch.randint(0, VOCAB, (2, 6)), torch.randint(0, VOCAB, (2, 6)))).mean().backward()
    for name, modules in sites.items():
        for m in modules:
            assert m.steps_taken == 1 and m.last_statistics is not None, name
    attention_draw = sites["attention"][0].last_statistics
    assert 0 < attention_draw.release_fraction < 1


def test_per_site_rates_and_regularisers():
    rates = dict(embedding_rate=0.1, attention_rate=0.2, residual_rate=0.3, mlp_rate=0.4, output_rate=0.0)
    model = tiny(regulariser=QSD(0.5), attention_regulariser=Dropout(0.05), **rates)
    sites = regularisers_by_site(model.net)
    for name in ("embedding", "residual", "mlp"):
        assert all(type(m) is QSD and m.rate == rates[f"{name}_rate"] for m in sites[name]), name
    assert all(type(m) is Dropout and m.rate == 0.2 for m in sites["attention"])  # own regulariser, site rate
    assert isinstance(sites["output"][0], nn.Identity)  # rate 0: no module
    assert model.site_rates == {"embedding": 0.1, "attention": 0.2, "residual": 0.3, "mlp": 0.4, "output": 0.0}
    own_rate = tiny(regulariser=QSD(0.5), mlp_regulariser=Dropout(0.05))
    assert all(type(m) is Dropout and m.rate == 0.05 for m in regularisers_by_site(own_rate.net)["mlp"])
    locked = tiny(regulariser=QSD(0.5), locked=True).net
    assert locked.embedding_reg.locked_dims == (1,) and locked.blocks[0].mlp_reg.unit_dims == (-1,)
    assert locked.blocks[0].attention.attention_reg.locked_dims == ()  # attention is never locked
    none = tiny(regulariser=NoRegulariser())
    assert all(isinstance(m, (NoRegulariser, nn.Identity)) for ms in regularisers_by_site(none.net).values() for m in ms)


def test_site_dims_are_checked():
    with pytest.raises(ConfigError, match="attention probabilities"):
        tiny(attention_regulariser=QSD(0.5, unit_dims=(4,)))
    with pytest.raises(ConfigError, match="d_model 10 is not a multiple of --model.num_heads 4"):
        tiny(d_model=10, num_heads=4)


def test_eval_is_deterministic_and_the_identity_of_every_site():
    torch.manual_seed(0)
    model = tiny(regulariser=QSD(0.5))
    plain = tiny(regulariser=NoRegulariser())
    plain.load_state_dict(model.state_dict(), strict=False)
    tokens = torch.randint(0, VOCAB, (2, 8))
    model.eval(), plain.eval()
    with torch.no_grad():
        a, b, c = model(tokens), model(tokens), plain(tokens)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(tokens), a)


# ---------------------------------------------------------------- the shared attention code


def test_attention_goes_through_the_code_replace_dropout_uses(monkeypatch):
    calls = []
    original = attention_code.regularised_sdpa

    def spy(*args, **kwargs):
        calls.append(kwargs["regulariser"])
        return original(*args, **kwargs)

    monkeypatch.setattr(attention_code, "regularised_sdpa", spy)
    model = tiny(regulariser=QSD(0.3)).train()
    tokens = torch.randint(0, VOCAB, (2, 6))
    model(tokens)
    assert calls == [b.attention.attention_reg for b in model.net.blocks]
    calls.clear()
    model.eval()(tokens)
    tiny(regulariser=QSD(0.3), attention_rate=0.0).train()(tokens)
    assert calls == []  # identity: the fused kernel


class SDPAWithDropout(nn.Module):
    """Attention as library code writes it: fused SDPA with a dropout probability."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.3 if self.training else 0.0, is_causal=True)


def test_attention_site_equals_replace_dropout_on_fused_attention():
    q, k, v = (torch.randn(2, 2, 6, 4) for _ in range(3))
    library = SDPAWithDropout()
    replace_dropout(library, "qsd", gamma=4.0)
    site = next(m for m in library.modules() if isinstance(m, QSD))
    ours = QSD(0.3, gamma=4.0)
    torch.manual_seed(1)
    expected = library(q, k, v)
    torch.manual_seed(1)
    got = attention_code.attend(q, k, v, is_causal=True, regulariser=ours)
    torch.testing.assert_close(got, expected)
    assert site.steps_taken == ours.steps_taken == 1
    assert not torch.allclose(got, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_fused_eval_path_equals_explicit_path():
    q, k, v = (torch.randn(2, 3, 7, 4) for _ in range(3))
    reg = QSD(0.5).eval()
    explicit = attention_code.regularised_sdpa(q, k, v, is_causal=True, regulariser=reg)
    for regulariser in (reg, NoRegulariser(), QSD(0.0), nn.Identity()):
        torch.testing.assert_close(attention_code.attend(q, k, v, is_causal=True, regulariser=regulariser), explicit)
    model = tiny(regulariser=QSD(0.3)).eval()
    tokens = torch.randint(0, VOCAB, (2, 8))
    fused = model(tokens)
    for block in model.net.blocks:  # force the explicit path with an identity that "applies"
        block.attention.attention_reg = QSD(1e-9).train()
        block.attention.attention_reg.forward = lambda x: x
    torch.testing.assert_close(model(tokens), fused, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- task: predict, schedule, CLI


def test_predict_step_per_sequence_nll():
    torch.manual_seed(0)
    model = tiny().eval()
    x, y = torch.randint(0, VOCAB, (3, 5)), torch.randint(0, VOCAB, (3, 5))
    with torch.no_grad():
        out = model.predict_step((x, y), 2)
        nll = F.cross_entropy(model(x).transpose(1, 2), y, reduction="none").sum(1)
    assert set(out) == {"index", "nll", "tokens", "ppl"}
    assert out["index"].tolist() == [6, 7, 8] and out["index"].dtype == torch.long
    assert out["tokens"].tolist() == [5, 5, 5] and out["tokens"].dtype == torch.long
    torch.testing.assert_close(out["nll"], nll)
    torch.testing.assert_close(out["ppl"], torch.exp(nll / 5))
    assert out["nll"].dtype == out["ppl"].dtype == torch.float32


def test_warmup_cosine_schedule_and_its_conflict_with_lr_scheduler():
    f = warmup_cosine(10, 100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(10_000) == pytest.approx(0.1)
    assert warmup_cosine(0, None, 0.1)(500) == 1.0
    with pytest.raises(ConfigError, match="give one"):
        tiny(warmup_steps=5, lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1))


def test_config_layout_matches_the_lstm_config(capsys):
    from qsd_lightning.cli import cli_main

    def composed(path):  # the config as the CLI composes it (configs/defaults included)
        with pytest.raises(SystemExit):
            cli_main(["--config", str(path), "--print_config"], run=False)
        return yaml.safe_load(capsys.readouterr().out)

    cfg, lstm = composed(CONFIG), composed(CONFIGS / "lstm_ptb.yaml")
    callbacks = [c["class_path"] for c in cfg["trainer"]["callbacks"]]
    assert [c["class_path"] for c in lstm["trainer"]["callbacks"]] == callbacks
    assert "qsd_lightning.callbacks.PredictionWriter" in callbacks
    assert cfg["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/ppl"
    assert [lg["class_path"] for lg in cfg["trainer"]["logger"]] == [lg["class_path"] for lg in lstm["trainer"]["logger"]]
    args = cfg["model"]["init_args"]
    assert args["tie_weights"] is True and args["context_length"] >= cfg["data"]["init_args"]["bptt"]
    assert cfg["data"]["init_args"]["data_dir"] == "data/ptb"


def test_fit_qsd_then_validate_matches_manual_perplexity(ptb_dir, run_cli):
    cli = run_cli("fit", "--config", str(CONFIG), f"--data.data_dir={ptb_dir}", *TINY, "--trainer.fast_dev_run=2",
                  "--model.regulariser=qsd", "--model.attention_rate=0.2")
    model, dm = cli.model, cli.datamodule
    assert model.net.blocks[0].attention.attention_reg.steps_taken == 2
    assert cli.trainer.lr_scheduler_configs[0].interval == "step"
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    result = trainer.validate(model, dm, verbose=False)[0]
    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for x, y in dm.windows("valid"):
            total += F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item()
            tokens += y.numel()
    assert result["val/loss"] == pytest.approx(total / tokens, rel=1e-5)
    assert result["val/ppl"] == pytest.approx(math.exp(total / tokens), rel=1e-5)
    predictions = trainer.predict(model, dm)
    assert sum(p["tokens"].sum().item() for p in predictions) == sum(y.numel() for _, y in dm.windows("test"))
    index = torch.cat([p["index"] for p in predictions])
    assert sorted(index.tolist()) == list(range(len(index)))  # every sequence once


def test_predict_writes_the_csv(ptb_dir, run_cli, tmp_path):
    cli = run_cli("fit", "--config", str(CONFIG), f"--data.data_dir={ptb_dir}", *TINY, "--trainer.max_steps=1",
                  "--trainer.limit_val_batches=1", "--trainer.logger=false")
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    run_cli("predict", "--config", str(CONFIG), f"--data.data_dir={ptb_dir}", *TINY, "--trainer.logger=false",
            f"--ckpt_path={ckpt}")
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0].split(",") == ["index", "nll", "tokens", "ppl"] and len(rows) > 2


def test_bptt_longer_than_context_is_a_config_error(ptb_dir, run_cli):
    with pytest.raises(ConfigError, match="--data.bptt 9 is longer than --model.context_length 8"):
        run_cli("fit", "--config", str(CONFIG), f"--data.data_dir={ptb_dir}", *TINY, "--data.bptt=9",
                "--trainer.fast_dev_run=1")
