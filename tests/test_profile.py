"""`nnspec profile`: a real profile of a small model, read back by `compiler/cost.profile_costs` and
used by `plan --profile` and `compile --profile`; tampered profile files are refused with located,
clear errors (exit 1, never a traceback); the >3x list is what `disagreements` computes."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

import nnspec.compiler as nc
from nnspec.compiler.cost import MAX_PROFILE_BYTES, ProfileError, cost_report, profile_costs, profile_option
from nnspec.runtime.cli import main
from nnspec.runtime.profile import disagreements, profile, profile_pipeline, render_disagreements

TINY = ["char_rnn", "--set", "hidden=16", "--set", "embed=8"]  # 4 nodes: embedding, lstm, dropout, linear
TINY_OVERRIDES = {"hidden": 16, "embed": 8}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """(path, document) of one real profile of the tiny char_rnn, written through the CLI."""
    path = tmp_path_factory.mktemp("prof") / "profile.json"
    assert main(["profile", *TINY, "--dim", "N=2", "--dim", "T=5", "--repeat", "3", "--warmup", "1",
                 "-o", str(path)]) == 0
    return path, json.loads(path.read_text())


def tiny_program():
    return nc.load("char_rnn", None, TINY_OVERRIDES, passes=profile_pipeline(), target="torch")


def test_profile_times_every_node_and_reads_back(measured, capsys):
    path, doc = measured
    program = tiny_program()
    g = program.forward
    ids = [n.id for n in g.topo() if n.op != "input"]
    assert doc["nnspec_profile"] == 1 and doc["graph"] == "forward" and doc["device"] == "cpu"
    assert doc["dims"] == {"N": 2, "T": 5} and doc["repeat"] == 3 and doc["threads"] == 1
    assert [n["id"] for n in doc["nodes"]] == ids
    rows = {r.id: r for r in cost_report(program, dims={"N": 2, "T": 5}).rows}
    for n in doc["nodes"]:  # the FLOPs are the cost model's at the profiled dims
        assert (n["flops"], n["bwd_flops"]) == (rows[n["id"]].flops, rows[n["id"]].bwd_flops)
    times = profile_costs(program, path)
    assert list(times) == ids and all(f > 0 and b >= 0 for f, b in times.values())
    assert times["lstm"][1] > 0 and times["decoder"][1] > 0  # both have a backward
    assert profile_option(times)["lstm"] == {"fwd": times["lstm"][0], "bwd": times["lstm"][1]}
    # no temporary file left beside it (written atomically)
    assert os.listdir(path.parent) == ["profile.json"]


def test_disagree_list_is_computed_from_the_nodes(measured):
    _, doc = measured
    rate, off = disagreements(doc["nodes"])
    assert doc["flop_rate"] == pytest.approx(rate) and rate > 0
    assert doc["disagree"] == json.loads(json.dumps(off))
    text = render_disagreements(doc)
    assert f"{len(off)} node(s) off their FLOPs by more than 3x" in text


def test_disagreements_rule():
    def node(i, flops, secs):
        return {"id": i, "op": "x", "flops": flops, "bwd_flops": 0, "forward_s": secs, "backward_s": 0.0}

    # rate: (100 + 100 + 800) FLOPs over 1 + 4 + 5 s = 100 FLOP/s; predicted 1 s, 1 s, 8 s
    nodes = [node("a", 100, 1.0), node("b", 100, 4.0), node("c", 800, 5.0),
             node("free", 0, 0.2), node("tiny", 0, 0.05)]
    rate, off = disagreements(nodes)
    assert rate == pytest.approx(100.0)
    assert [d["id"] for d in off] == ["b", "free"]  # b is 4x slow; c (0.6x) and a agree
    assert off[0]["ratio"] == pytest.approx(4.0) and off[1]["ratio"] is None  # FLOP-free, 2% of the time
    assert disagreements([node("z", 0, 0.0)]) == (0.0, [])


def test_plan_uses_the_profile(measured, capsys):
    path, _ = measured
    assert main(["plan", *TINY, "--stages", "2", "--profile", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cost_unit"] == "picoseconds"


def test_compile_takes_the_profile(measured, tmp_path, capsys):
    path, _ = measured
    art = tmp_path / "art"
    assert main(["compile", *TINY, "--target", "torch", "--stages", "2", "--profile", str(path),
                 "-o", str(art)]) == 0
    assert (art / "model.py").exists()
    # without a planning pass to read it, --profile is a usage error
    assert main(["compile", *TINY, "--target", "torch", "--profile", str(path), "-o", str(tmp_path / "b")]) == 2
    assert "--profile is read by the planning passes" in capsys.readouterr().err


def _tampered(tmp_path, measured, edit) -> str:
    doc = json.loads(measured[0].read_text())
    text = edit(doc)
    p = tmp_path / "bad.json"
    p.write_text(text if isinstance(text, str) else json.dumps(doc))
    return str(p)


def _set(key, value, i=1):
    def edit(doc):
        doc["nodes"][i][key] = value
    return edit


TAMPERED = {
    "unknown node": (_set("id", "not_a_node"), "node 'not_a_node' is not a node of graph 'forward'"),
    "input node": (_set("id", "ids"), "node 'ids' is not a node of graph 'forward'"),
    "duplicate": (_set("id", "embed"), "node 'embed' is listed twice"),
    "negative": (_set("forward_s", -1.0), "forward_s is -1.0"),
    "string": (_set("backward_s", "fast"), "backward_s is 'fast'"),
    "bool": (_set("backward_s", True), "backward_s is True"),
    "nan": (lambda d: json.dumps(d).replace('"forward_s": ', '"forward_s": NaN, "x": ', 1),
            "NaN is not a number of seconds"),
    "infinity": (lambda d: json.dumps(d).replace('"backward_s": ', '"backward_s": Infinity, "x": ', 1),
                 "Infinity is not a number of seconds"),
    "version": (lambda d: d.update(nnspec_profile=2), "is not an nnspec profile"),
    "graph": (lambda d: d.update(graph="nope"), "graph 'nope' is not one of the program's"),
    "nodes": (lambda d: d.update(nodes={"a": 1}), "'nodes' is not a list"),
    "not json": (lambda d: "{nodes: [", "is not a JSON profile"),
    "deep": (lambda d: "[" * 100_000, "is not a JSON profile"),
    "no id": (lambda d: d["nodes"].append({"forward_s": 1.0}), "has no string 'id'"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_profiles_are_refused(case, measured, tmp_path, capsys):
    edit, message = TAMPERED[case]
    path = _tampered(tmp_path, measured, edit)
    with pytest.raises(ProfileError) as e:
        profile_costs(tiny_program(), path)
    assert message in e.value.message and "bad.json" in e.value.message
    capsys.readouterr()
    assert main(["plan", *TINY, "--stages", "2", "--profile", path]) == 1
    err = capsys.readouterr().err
    assert "profile error" in err and message in err and "Traceback" not in err


def test_huge_profile_is_refused_before_reading(tmp_path, capsys):
    p = tmp_path / "huge.json"
    with open(p, "wb") as f:
        f.truncate(MAX_PROFILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ProfileError, match="bytes or more"):
        profile_costs(tiny_program(), p)
    assert main(["compile", *TINY, "--target", "torch", "--stages", "2", "--profile", str(p),
                 "-o", str(tmp_path / "art")]) == 1
    assert "bytes or more" in capsys.readouterr().err and not (tmp_path / "art").exists()


def test_compile_refuses_a_profile_of_another_program(measured, tmp_path, capsys):
    path, _ = measured
    for plan in (["--remat-budget", "0.9"], ["--stages", "2"]):  # checked here / by partition_pipeline
        assert main(["compile", "resnet", "--preset", "resnet20", "--target", "torch", *plan,
                     "--profile", str(path), "-o", str(tmp_path / "art")]) == 1
        err = capsys.readouterr().err
        assert "embed" in err and "this spec, preset and" in err and not (tmp_path / "art").exists()


@pytest.mark.parametrize("args, code, message", [
    (["--dim", "Q=3"], 1, "--dim Q: no such symbolic dim"),
    (["--dim", "N=100000"], 1, "--dim N=100000 is outside the spec's range"),
    (["--dim", "N=x"], 2, "expected SYMBOL=INT"),
    (["--repeat", "0"], 1, "expected: 1 <= repeat"),
    (["--threads", "100000"], 1, "1 <= threads <= 1024"),
])
def test_bad_profile_arguments(args, code, message, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", *TINY, *args, "-o", str(out)]) == code
    assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the no-GPU error cannot happen")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["profile", *TINY, "--device", "cuda", "-o", str(out)]) == 3
    err = capsys.readouterr().err
    assert "--device cuda: torch sees no CUDA GPU" in err and "Traceback" not in err and not out.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_profile():
    doc = profile(tiny_program(), {"N": 2, "T": 5}, device="cuda", repeat=3, warmup=1)
    assert doc["device"].startswith("cuda") and all(math.isfinite(n["forward_s"]) for n in doc["nodes"])


def test_a_scan_node_is_timed_whole():
    program = nc.load("tests/specs/bahdanau_decoder.yaml")  # a decoder written as a scan over its cell
    doc = profile(program, repeat=1, warmup=0)
    assert [n["id"] for n in doc["nodes"]] == [n.id for n in program.forward.topo() if n.op != "input"]
    scans = [n for n in doc["nodes"] if n["op"] == "scan"]
    assert scans and all(n["forward_s"] > 0 and n["backward_s"] > 0 for n in scans)


def test_progress_without_tqdm(monkeypatch, capsys):
    import sys

    from nnspec.runtime.profile import _Bar
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` raises ImportError
    bar = _Bar(2, "profile t", True)
    assert bar.tqdm is None
    bar.update()
    bar.update()
    bar.close()
    err = capsys.readouterr().err
    assert "profile t [" in err and "2/2" in err
