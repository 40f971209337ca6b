"""The bundled zoo: every spec and preset compiles, has the metadata the zoo promises, counts exactly
the parameters its architecture has, and agrees with the figures its paper reports (or the
disagreement is one documented in the spec and specs/README.md)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import nnspec.compiler as c
from nnspec.compiler.cost import compare_reported, cost_report
from nnspec.compiler.ir.dims import symbols
from nnspec.compiler.spec.load import bundled_specs, load_spec

README = Path(__file__).resolve().parent.parent / "specs" / "README.md"


# -- exact references, derived by hand from each architecture's layer table -------------------------
def cifar_resnet_params(n: int, option_b: bool = True) -> int:
    """6n+2-layer CIFAR ResNet: 3x3 stem (16), three stages of n basic blocks (16/32/64), fc 10."""
    total = 3 * 16 * 9 + 2 * 16  # stem conv + BN
    cin = 16
    for w in (16, 32, 64):
        for b in range(n):
            inp = cin if b == 0 else w
            total += 9 * inp * w + 9 * w * w + 2 * (2 * w)  # two 3x3 convs, two BNs
        if cin != w and option_b:
            total += cin * w + 2 * w  # 1x1 projection + BN
        cin = w
    return total + 64 * 10 + 10


def alexnet_paper_params() -> int:
    """Figure 2 of the paper: conv2/4/5 see one tower's 48/192/192 maps; the fc layers are dense."""
    convs = [(96, 3, 11), (256, 48, 5), (384, 256, 3), (384, 192, 3), (256, 192, 3)]  # (out, in per group, k)
    fcs = [(256 * 6 * 6, 4096), (4096, 4096), (4096, 1000)]
    return sum(o * i * k * k + o for o, i, k in convs) + sum(i * o + o for i, o in fcs)


def char_rnn_params(vocab: int, embed: int, hidden: int, layers: int) -> int:
    lstm = sum(4 * hidden * ((embed if l == 0 else hidden) + hidden) + 8 * hidden for l in range(layers))
    return vocab * embed + lstm + hidden * vocab + vocab


def encoder_params(d: int, d_ff: int, layers: int) -> int:
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * d_ff + d_ff) + (d_ff * d + d) + 2 * (2 * d)
    return layers * per_layer


def encoder_decoder_params(d: int, d_ff: int, layers: int, vocab: int) -> int:
    """The 2017 model: the encoder stack, decoder layers of two attentions, a feed-forward network and
    three LayerNorms, and one vocab x d table for source, target and the pre-softmax projection."""
    attention, ffn, norms = 4 * d * d + 4 * d, 2 * d * d_ff + d_ff + d, 3 * 2 * d
    return encoder_params(d, d_ff, layers) + layers * (2 * attention + ffn + norms) + vocab * d


# (spec, preset) -> exact parameter count; None is the spec's default params.
EXPECTED_PARAMS = {
    # torchvision's published counts
    ("resnet", None): 25_557_032,
    ("resnet", "resnet18"): 11_689_512,
    ("resnet", "resnet34"): 21_797_672,
    ("resnet", "resnet50"): 25_557_032,
    ("resnet", "resnet101"): 44_549_160,
    ("resnet", "resnet152"): 60_192_808,
    # the CIFAR nets: option A shortcuts (parameter-free), and the plain nets with none
    ("resnet", "resnet20"): cifar_resnet_params(3, option_b=False),
    ("resnet", "resnet32"): cifar_resnet_params(5, option_b=False),
    ("resnet", "resnet44"): cifar_resnet_params(7, option_b=False),
    ("resnet", "resnet56"): cifar_resnet_params(9, option_b=False),
    ("resnet", "resnet110"): cifar_resnet_params(18, option_b=False),
    ("resnet", "plain20"): cifar_resnet_params(3, option_b=False),
    ("resnet", "plain56"): cifar_resnet_params(9, option_b=False),
    ("alexnet", None): 61_100_840,
    ("alexnet", "torchvision"): 61_100_840,
    ("alexnet", "paper"): alexnet_paper_params(),
    ("char_rnn", None): char_rnn_params(65, 64, 128, 2),
    ("char_rnn", "small"): char_rnn_params(65, 64, 128, 2),
    ("char_rnn", "shakespeare"): char_rnn_params(65, 512, 512, 3),
    ("transformer", None): encoder_params(512, 2048, 6),
    ("transformer", "encoder_base"): encoder_params(512, 2048, 6),
    ("transformer", "encoder_big"): encoder_params(1024, 4096, 6),
    ("transformer", "base"): encoder_decoder_params(512, 2048, 6, 37000),
    ("transformer", "big"): encoder_decoder_params(1024, 4096, 6, 37000),
}

# Reported figures that the computed ones do not match at the stated precision, each explained
# in a comment in its spec and in specs/README.md; the relative gap stays under `bound`.
KNOWN_GAPS = {
    ("alexnet", "paper", "params"): 0.02,     # the paper's round "60 million"; 60,965,224 as described
    ("resnet", "resnet34", "macs"): 0.03,     # the paper rounds 3.66G down to 3.6G
    ("resnet", "resnet50", "macs"): 0.08,     # v1.5 (stride on the 3x3) does more work than v1
    ("resnet", "resnet101", "macs"): 0.08,
    ("resnet", "resnet152", "macs"): 0.08,
    ("preact_resnet", "preact1001", "params"): 0.015,  # Table 3's 10.2M leaves batch norm out; 10,327,706 with it
    ("ntm", "copy", "params"): 0.04,          # Table 2's 67,561; pytorch-ntm's layout + the learned initial state: 65,440
    # Table 3's 65M / 213M; nn.Transformer's stacks (no final norms) + one 37k x d table: 63.08M / 214.25M
    ("transformer", "base", "params"): 0.035,
    ("transformer", "big", "params"): 0.01,
    # Table 2's 117M / 345M; the released weights (GPT2LMHeadModel, head tied) have 124.44M / 354.82M
    ("gpt2", None, "params"): 0.07,
    ("gpt2", "small", "params"): 0.07,
    ("gpt2", "medium", "params"): 0.03,
}


def zoo():
    out = []
    for path in bundled_specs():
        spec = load_spec(path.stem)
        out.append((path.stem, None))
        out += [(path.stem, p) for p in spec.model.presets]
    return out


ZOO = zoo()
_PROGRAMS: dict = {}


def program(spec, preset):
    if (spec, preset) not in _PROGRAMS:
        _PROGRAMS[spec, preset] = c.load(spec, preset)
    return _PROGRAMS[spec, preset]


def computed(spec, preset) -> dict:
    rep = cost_report(program(spec, preset))
    return {"params": rep.params, "macs": rep.flops // 2}  # cost counts 2 FLOPs per multiply-add


def test_zoo_has_the_promised_specs_and_presets():
    assert set(EXPECTED_PARAMS) <= set(ZOO)


@pytest.mark.parametrize("spec,preset", ZOO, ids=[f"{s}-{p or 'default'}" for s, p in ZOO])
def test_spec_compiles_with_exact_param_count(spec, preset):
    p = program(spec, preset)
    assert p.done == ["expand", "infer_shapes", "resolve_ties", "eliminate_dead_code"]
    if (spec, preset) in EXPECTED_PARAMS:
        assert cost_report(p).params == EXPECTED_PARAMS[spec, preset]


@pytest.mark.parametrize("spec,preset", ZOO, ids=[f"{s}-{p or 'default'}" for s, p in ZOO])
def test_reported_figures_agree(spec, preset):
    loaded = load_spec(spec, preset)
    rows = compare_reported(loaded.reported, computed(spec, preset))
    for row in rows:
        gap = KNOWN_GAPS.get((spec, preset, row["figure"]))
        if gap is None:
            assert row["match"], f"{spec}/{preset}: {row}"
        else:  # a documented gap: it must still exist (else drop it from the docs) and stay small
            assert not row["match"] and row["rel_err"] < gap, f"{spec}/{preset}: {row}"
    if spec in ("resnet", "alexnet"):
        assert any(r["figure"] == "params" for r in rows), "ImageNet/CIFAR presets report a parameter count"


def test_cifar_option_b_adds_two_projections():
    """`shortcut: B` on the CIFAR nets (option A by default) adds exactly the two projections."""
    for preset in ("resnet20", "resnet56", "resnet110"):
        p = c.load("resnet", preset, {"shortcut": "B"})
        proj = sum(q.numel() for n in p.all_nodes() if ".downsample." in n.id
                   for q in n.params.values() if not q.buffer)
        assert proj == 2 * 32 + 16 * 32 + 2 * 64 + 32 * 64  # exactly two projections
        n_blocks = int(preset[len("resnet"):]) // 6
        assert cost_report(p).params == cifar_resnet_params(n_blocks, option_b=True)
        assert cost_report(p).params - proj == cost_report(program("resnet", preset)).params


@pytest.mark.parametrize("spec", sorted({s for s, _ in ZOO}))
def test_spec_metadata(spec):
    loaded = load_spec(spec)
    m = loaded.model
    assert m.description and m.paper and m.paper.title and m.paper.authors and m.paper.year
    assert m.paper.arxiv or m.paper.url
    for name, preset in m.presets.items():
        assert preset.description, f"preset {name} has no description"
    syms = set()
    for inp in program(spec, None).forward.inputs():
        for d in inp.outputs[0].shape:
            syms |= symbols(d)
    assert syms <= set(m.dims), f"undeclared dims {syms - set(m.dims)}"
    for s in syms:
        r = m.dims[s]
        assert r.opt is not None and r.max is not None and 1 <= r.min <= r.opt <= r.max


OUTPUT_SHAPES = {
    ("resnet", "resnet50"): ("N", 1000),
    ("resnet", "resnet20"): ("N", 10),
    ("alexnet", "paper"): ("N", 1000),
    ("char_rnn", "shakespeare"): ("N", "T", 65),
    ("transformer", "encoder_big"): ("N", "T", 1024),
    ("transformer", "big"): ("N", "T", 37000),
}


@pytest.mark.parametrize("spec,preset", sorted(OUTPUT_SHAPES))
def test_output_types(spec, preset):
    g = program(spec, preset).forward
    (out,) = g.outputs
    t = g.output_type(out)
    assert t.dtype == "float32" and tuple(t.shape) == OUTPUT_SHAPES[spec, preset]


def test_resnet_stage_layout():
    """Projections exactly where the shape changes; stride on the bottleneck's 3x3 (v1.5)."""
    g = program("resnet", "resnet50").forward
    proj = sorted({n.id.rsplit(".downsample.", 1)[0] for n in g.nodes() if ".downsample." in n.id})
    assert proj == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert g.node("layer2.0.conv2").attrs.stride == 2 and g.node("layer2.0.conv1").attrs.stride == 1
    g18 = program("resnet", "resnet18").forward
    assert not any(n.id.startswith("layer1.0.downsample") for n in g18.nodes())
    assert g18.node("layer3.1.conv1").params["weight"].shape == (256, 256, 3, 3)


def readme_rows() -> dict:
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        cells = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`"), cells[1].strip("`")] = cells
    return rows


def test_readme_table_is_current():
    """specs/README.md lists every preset with the count nnspec computes today."""
    rows = readme_rows()
    presets = {(s, p) for s, p in ZOO if p is not None}
    assert set(rows) == presets
    for (spec, preset), cells in rows.items():
        assert int(cells[4].replace(",", "")) == cost_report(program(spec, preset)).params, cells
