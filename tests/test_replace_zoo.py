"""replace_dropout on real architectures of torchvision, timm and Hugging Face (issue 13).

Every model is built from its own constructor / config with random weights (nothing is
downloaded), small enough for CPU. The acceptance tests, over every model:

* ``none``: a training forward is deterministic (no Bernoulli dropout survived anywhere);
* ``qsd``: every inserted regulariser fires on a training forward, the output differs from
  eval, gradients flow;
* eval outputs are bit-identical to the original model's;
* the sites found (by kind) are the coverage table of the README.
"""

from __future__ import annotations

import copy
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from qsd_lightning.regularisers import QSD, Dropout, NoRegulariser, replace_dropout  # noqa: E402
from qsd_lightning.regularisers.replace import Replacement  # noqa: E402


def _images(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def _tokens(vocab: int = 64) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0))


# --- torchvision ------------------------------------------------------------------------------


def tv_squeezenet():
    from torchvision.models import squeezenet1_1

    return squeezenet1_1(weights=None, num_classes=10, dropout=0.3), _images(64)


def tv_mobilenet_v3():
    from torchvision.models import mobilenet_v3_small

    return mobilenet_v3_small(weights=None, num_classes=10, dropout=0.2, width_mult=0.25), _images()


def tv_densenet():
    from torchvision.models import DenseNet

    net = DenseNet(growth_rate=8, block_config=(1, 1), num_init_features=8, bn_size=2, drop_rate=0.2, num_classes=10)
    return net, _images()


def tv_vit():
    from torchvision.models import VisionTransformer

    net = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        dropout=0.1, attention_dropout=0.1, num_classes=10,
    )
    nn.init.normal_(net.heads.head.weight)  # zero-initialised: outputs would not show dropout
    return net, _images()


def tv_swin():
    from torchvision.models import SwinTransformer

    net = SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[2, 2],
        dropout=0.1, attention_dropout=0.1, stochastic_depth_prob=0.0, num_classes=10,
    )
    return net, _images()


def torch_transformer():
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False), torch.randn(2, 5, 16)


# --- timm -------------------------------------------------------------------------------------


def _timm(name: str, **kwargs):
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


def timm_vit():
    net = _timm(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2,
        drop_rate=0.1, pos_drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1,
    )
    return net, _images()


def timm_swin():
    net = _timm(
        "swin_tiny_patch4_window7_224", img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1),
        num_heads=(1, 2), drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.0,
    )
    return net, _images()


def timm_resnet():
    return _timm("resnet10t", drop_rate=0.2), _images()


def timm_mobilenetv3():
    return _timm("mobilenetv3_small_050", drop_rate=0.2), _images()


# --- Hugging Face transformers ----------------------------------------------------------------


def _hf():
    return pytest.importorskip("transformers")


def hf_gpt2():
    t = _hf()
    config = t.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0)
    return t.GPT2LMHeadModel(config), _tokens()


def hf_gpt2_eager():
    t = _hf()
    config = t.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0,
        attn_implementation="eager",
    )
    return t.GPT2LMHeadModel(config), _tokens()


def hf_bert():
    t = _hf()
    config = t.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=64,
        max_position_embeddings=16, num_labels=3,
    )
    return t.BertForSequenceClassification(config), _tokens()


def hf_distilbert():
    t = _hf()
    config = t.DistilBertConfig(
        n_layers=2, dim=32, n_heads=2, hidden_dim=64, vocab_size=64, max_position_embeddings=16, attention_dropout=0.1,
    )
    return t.DistilBertModel(config), _tokens()


def hf_t5():
    t = _hf()
    config = t.T5Config(
        num_layers=1, num_decoder_layers=1, d_model=32, d_ff=64, num_heads=2, d_kv=16, vocab_size=64,
        dropout_rate=0.1, decoder_start_token_id=0,
    )
    return t.T5ForConditionalGeneration(config), _tokens()


def hf_bart(layerdrop: float = 0.0):
    t = _hf()
    config = t.BartConfig(
        encoder_layers=1, decoder_layers=1, d_model=32, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=64, max_position_embeddings=32, dropout=0.1,
        attention_dropout=0.1, activation_dropout=0.1, encoder_layerdrop=layerdrop,
    )
    return t.BartForConditionalGeneration(config), _tokens()


def hf_llama(attention_dropout: float = 0.1):
    t = _hf()
    config = t.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64, max_position_embeddings=16, attention_dropout=attention_dropout, bos_token_id=0, eos_token_id=0,
    )
    return t.LlamaForCausalLM(config), _tokens()


def hf_vit():
    t = _hf()
    config = t.ViTConfig(
        image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
        num_labels=10, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )
    return t.ViTForImageClassification(config), _images()


#: model -> sites found by kind: the coverage table of the README
ZOO = {
    tv_squeezenet: {"module": 1},
    tv_mobilenet_v3: {"module": 1},
    tv_densenet: {"functional": 2},
    tv_vit: {"module": 7, "attention": 2},
    tv_swin: {"module": 4, "functional": 4},
    torch_transformer: {"module": 6, "attention": 2},
    timm_vit: {"module": 8, "attention": 2},
    timm_swin: {"module": 7, "attention": 2},
    timm_resnet: {"functional": 1},
    timm_mobilenetv3: {"functional": 1},
    hf_gpt2: {"module": 5, "attention": 2},
    hf_gpt2_eager: {"module": 5, "attention": 2},
    hf_bert: {"module": 6, "attention": 2},
    hf_distilbert: {"module": 3, "attention": 2},
    hf_t5: {"module": 9, "attention": 3},
    hf_bart: {"functional": 9, "attention": 3},
    hf_llama: {"attention": 2},
    hf_vit: {"module": 3, "attention": 2},
}
MODELS = [pytest.param(factory, id=factory.__name__) for factory in ZOO]


def build(factory):
    torch.manual_seed(0)
    model, x = factory()
    return model.eval(), x


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if type(model).__name__.startswith(("T5", "Bart")):
        return model(input_ids=x, labels=x).logits
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out[0]


def replaced(model: nn.Module, name: str, **kwargs) -> Replacement:
    """``replace_dropout``, asserting that no site is left to be found at run time."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = replace_dropout(model, name, **kwargs)
    assert not [w for w in caught if "replace_dropout" in str(w.message)]
    return result


def train_forward(model, x, seed):
    torch.manual_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = forward(model.train(), x)
    runtime = [str(w.message) for w in caught if "replace_dropout" in str(w.message)]
    assert not runtime, runtime  # every site was found by the scan
    return y


@pytest.mark.parametrize("factory", MODELS)
def test_none_leaves_no_dropout_anywhere(factory):
    model, x = build(factory)
    result = replaced(model, "none")
    assert result.by_kind() == ZOO[factory]
    with torch.no_grad():
        assert torch.equal(train_forward(model, x, seed=0), train_forward(model, x, seed=1))


@pytest.mark.parametrize("factory", MODELS)
def test_qsd_fires_at_every_site_and_trains(factory):
    model, x = build(factory)
    with torch.no_grad():
        expected = forward(model, x)
    result = replaced(model, "qsd")
    assert result.by_kind() == ZOO[factory] and not result.unreached
    assert all(isinstance(site.regulariser, QSD) for site in result)
    fired = {site.path: 0 for site in result}
    for site in result:
        site.regulariser.register_forward_hook(lambda m, i, o, path=site.path: fired.__setitem__(path, fired[path] + 1))
    y = train_forward(model, x, seed=0)
    assert all(fired.values()), [path for path, n in fired.items() if not n]
    assert not torch.equal(y.detach(), expected)
    y.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["qsd", "dropout"])
@pytest.mark.parametrize("factory", MODELS)
def test_eval_output_bit_identical(factory, name):
    model, x = build(factory)
    with torch.no_grad():
        before = forward(model, x)
        replaced(model, name)
        assert torch.equal(forward(model.train().eval(), x), before)


# --- rates, report, properties ----------------------------------------------------------------


@pytest.mark.parametrize("factory", [tv_vit, tv_densenet, timm_vit, hf_gpt2, hf_llama], ids=lambda f: f.__name__)
def test_rates_kept_or_overridden(factory):
    model, x = build(factory)
    result = replaced(model, "qsd", gamma=4.0)
    assert {site.rate for site in result} == {site.regulariser.rate for site in result} != {0.0}
    assert all(site.regulariser.gamma == 4.0 for site in result)
    model, x = build(factory)
    result = replaced(model, "dropout", rate=0.3)
    assert all(isinstance(s.regulariser, Dropout) and s.regulariser.rate == 0.3 and s.rate != 0.3 for s in result)
    train_forward(model, x, seed=0)


def test_hf_attention_goes_through_registered_interface():
    model, x = build(hf_gpt2)
    assert model.config._attn_implementation == "sdpa"
    result = replaced(model, "qsd")
    assert model.config._attn_implementation == "regularised_sdpa"
    attn = [s for s in result if s.kind == "attention"]
    assert [s.path for s in attn] == ["transformer.h.0.attn.attn_dropout", "transformer.h.1.attn.attn_dropout"]
    assert all("HF attention interface" in s.origin for s in attn)
    model, x = build(hf_llama)
    result = replaced(model, "qsd")
    assert [s.path for s in result] == [f"model.layers.{i}.self_attn.attn_regulariser" for i in range(2)]
    assert all(s.rate == 0.1 and s.kind == "attention" for s in result)


@pytest.mark.parametrize(
    "case", ["plain", "causal", "bool_mask", "float_mask", "gqa", "scale", "fully_masked_row"]
)
def test_regularised_sdpa_is_sdpa_with_the_regulariser_on_the_probabilities(case):
    from qsd_lightning.regularisers.attention import regularised_sdpa

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=g) for _ in range(3))
    kwargs = {}
    if case == "causal":
        kwargs["is_causal"] = True
    elif case == "bool_mask":
        kwargs["attn_mask"] = torch.rand(5, 5, generator=g) > 0.3
        kwargs["attn_mask"][:, 0] = True
    elif case == "float_mask":
        kwargs["attn_mask"] = torch.randn(2, 1, 5, 5, generator=g)
    elif case == "gqa":
        k, v = k[:, :2], v[:, :2]
        kwargs["enable_gqa"] = True
    elif case == "scale":
        kwargs["scale"] = 0.3
    elif case == "fully_masked_row":
        kwargs["attn_mask"] = torch.ones(5, 5, dtype=torch.bool)
        kwargs["attn_mask"][2] = False
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    identity = QSD(rate=0.5).eval()
    torch.testing.assert_close(regularised_sdpa(q, k, v, **kwargs, regulariser=identity), expected)
    seen = []
    spy = nn.Identity()
    spy.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    regularised_sdpa(q, k, v, **kwargs, regulariser=spy)
    assert seen[0].shape[-2:] == (5, 5) and torch.all(seen[0] >= 0)


def test_report_table_and_count():
    model, _ = build(timm_resnet)
    result = replaced(model, "qsd", gamma=8.0)
    assert len(result) == int(result) == result.count == 1
    assert list(range(result)) == [0]
    text = str(result)
    assert text.splitlines()[0] == "replace_dropout(model, 'qsd', gamma=8.0): 1 sites"
    for word in ("path", "kind", "rate", "regulariser", "origin", "drop_rate_regulariser", "functional",
                 "F.dropout at timm/models/resnet.py", "QSD(rate=0.2, gamma=8.0"):
        assert word in text
    assert "1 functional" in repr(result)


def test_regulariser_reads_like_torch_dropout():
    q = QSD(rate=0.2)
    assert q.p == 0.2 and q.inplace is False
    with pytest.raises(AttributeError):
        q.p = 0.5
    assert NoRegulariser(rate=0.1).p == 0.1


# --- what is not replaced is reported -------------------------------------------------------


def test_stochastic_depth_and_rate_zero_sites_are_listed():
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2,
        num_classes=10, drop_path_rate=0.1,
    )
    result = replaced(model, "qsd")
    assert [u.path for u in result.unreached] == ["blocks.1.drop_path1", "blocks.1.drop_path2"]
    assert "stochastic depth" in result.unreached[0].reason and "not replaced (2)" in str(result)

    model, _ = build(lambda: hf_bart(layerdrop=0.2))
    result = replaced(model, "qsd")
    assert [(u.path, u.what) for u in result.unreached] == [("model.encoder", "LayerDrop(0.2)")]

    model, _ = build(lambda: hf_llama(attention_dropout=0.0))
    result = replaced(model, "qsd")
    assert result.count == 0 and len(result.unreached) == 2
    assert all("rate 0" in u.reason for u in result.unreached)
    assert model.config._attn_implementation == "sdpa"  # nothing to route: model untouched


def test_fused_hf_attention_kernel_is_reported_not_silent():
    model, _ = build(hf_gpt2)
    model.config._attn_implementation_internal = "flex_attention"
    result = replaced(model, "qsd")
    assert {u.path for u in result.unreached} == {"transformer.h.0.attn", "transformer.h.1.attn"}
    assert all("attn_implementation='sdpa'" in u.reason for u in result.unreached)
    assert result.by_kind() == {"module": 7}  # attn_dropout stays a replaced module (eager upcast path)
    assert model.config._attn_implementation == "flex_attention"


def _dropout_helper(x, rate):
    return _inner_helper(x, rate)


def _inner_helper(x, rate):
    return F.dropout(x, p=rate, training=True)


class TwoLevels(nn.Module):
    """Functional dropout two helper calls deep: beyond the scan, found at run time."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.rate = 0.5

    def forward(self, x):
        return _dropout_helper(self.fc(x), self.rate if self.training else 0.0)


def test_site_missed_by_scan_gets_a_regulariser_at_run_time():
    model = TwoLevels()
    result = replace_dropout(model, "none")
    assert result.count == 0
    x = torch.randn(8, 4)
    with pytest.warns(RuntimeWarning, match=r"F\.dropout at .*test_replace_zoo.py:\d+ inside <root> \(TwoLevels\)"):
        y = model.train()(x)
    assert result.count == 1 and result[0].path == "dropout_regulariser" and result[0].rate == 0.5
    assert isinstance(model.dropout_regulariser, NoRegulariser) and torch.equal(y, model.fc(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.manual_seed(1)
        assert torch.equal(model(x), y)  # found once: no more warnings, still no dropout


class HandMadeMask(nn.Module):
    def forward(self, x):
        if self.training:
            return x * torch.bernoulli(torch.full_like(x, 0.5)) * 2
        return x


def test_hand_written_mask_is_reported():
    model = nn.Sequential(nn.Linear(4, 4), HandMadeMask())
    result = replace_dropout(model, "qsd")
    with pytest.warns(RuntimeWarning, match="bernoulli"):
        model.train()(torch.randn(2, 4))
    assert [(u.path, u.what) for u in result.unreached] == [("1", "HandMadeMask")]


# --- robustness --------------------------------------------------------------------------------


def test_need_weights_path_of_multihead_attention():
    mha = nn.MultiheadAttention(8, 2, dropout=0.2)
    x = torch.randn(5, 3, 8)
    expected = mha.eval()(x, x, x)
    result = replaced(mha, "none")
    assert [s.path for s in result] == ["attn_regulariser"]
    assert all(torch.equal(a, b) for a, b in zip(mha(x, x, x), expected))
    mha.train()
    torch.manual_seed(0)
    a = mha(x, x, x, need_weights=True)
    torch.manual_seed(1)
    b = mha(x, x, x, need_weights=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_second_call_retargets_the_same_sites():
    model, x = build(hf_t5)
    with torch.no_grad():
        expected = forward(model, x)
    first = replaced(model, "qsd")
    second = replaced(model, "dropout")
    assert [s.path for s in second] == [s.path for s in first]
    assert all(type(s.regulariser) is Dropout for s in second)
    assert not any(isinstance(m, QSD) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(forward(model, x), expected)
    train_forward(model, x, seed=0)


def test_deepcopy_routes_to_its_own_modules(monkeypatch):
    from qsd_lightning.regularisers import fast

    monkeypatch.setattr(fast, "ENABLED", False)  # Dropout then calls F.dropout itself: not re-routed
    model, x = build(tv_swin)
    replaced(model, "dropout")
    twin = copy.deepcopy(model)
    hits = {"model": 0, "twin": 0}
    for key, net in (("model", model), ("twin", twin)):
        for m in net.modules():
            if isinstance(m, Dropout):
                m.register_forward_hook(lambda *_, key=key: hits.__setitem__(key, hits[key] + 1))
    train_forward(twin, x, seed=0)
    assert hits == {"model": 0, "twin": 8}
    twin.load_state_dict(model.state_dict())


def test_failed_forward_leaves_no_router_behind():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.rate = 0.3

        def forward(self, x):
            x = F.dropout(x, p=self.rate, training=self.training)
            raise RuntimeError("boom")

    model = Boom()
    result = replaced(model, "qsd")
    assert result.by_kind() == {"functional": 1}
    with pytest.raises(RuntimeError, match="boom"):
        model.train()(torch.randn(2, 3))
    assert torch._C._len_torch_function_stack() == 0
    y = torch.randn(2, 3)
    assert torch.equal(F.dropout(y, 0.0), y)
