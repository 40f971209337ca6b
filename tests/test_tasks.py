"""runtime/tasks: seeded generators are deterministic, their labels exact, their bounds enforced,
and a task that does not fit a spec is a clear error naming both sides."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from nnspec.compiler.passes.manager import compile_spec
from nnspec.compiler.spec.load import load_spec
from nnspec.runtime.tasks import TASKS, TaskError, check_against, make_task
from nnspec.runtime.tasks import text as text_tasks
from nnspec.runtime.tasks.pointer import convex_hull

EXPECTED = {"copy", "repeat_copy", "associative_recall", "sort", "convex_hull", "tsp", "nth_farthest",
            "char_corpus", "word_corpus", "seq2seq", "ctc_spectrogram", "graph_properties",
            "sort_of_clevr", "preference_pairs", "retrieval", "digits", "set_average", "induction"}


def _make(name, **opts):
    return make_task(name, opts)


def test_registry():
    assert set(TASKS) == EXPECTED
    for cls in TASKS.values():
        assert cls.metric and cls.metric_doc and cls.__doc__
        assert cls.Options.model_config["extra"] == "forbid"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_deterministic_and_declared(name):
    a, b = _make(name, seed=3), _make(name, seed=3)
    x, y = a.batch(5, 16), b.batch(5, 16)
    assert set(x) == set(a.feeds()) | set(a.reads())
    for k in x:
        assert x[k].tobytes() == y[k].tobytes(), k
    slots = {**a.feeds(), **a.reads()}
    for k, arr in x.items():
        s = slots[k]
        assert arr.dtype.name == s.dtype, k
        assert arr.shape == tuple({"N": 16, "2N": 32}.get(d, d) for d in s.shape), k
        if s.high is not None:
            assert arr.min() >= 0 and arr.max() < s.high, k
    other_step, other_seed = a.batch(6, 16), _make(name, seed=4).batch(5, 16)
    for z in (other_step, other_seed):
        assert any(z[k].tobytes() != x[k].tobytes() for k in a.feeds())
    e1 = [e["%s" % k].tobytes() for e in a.eval_batches(8, 2) for k in sorted(a.feeds())]
    e2 = [e["%s" % k].tobytes() for e in b.eval_batches(8, 2) for k in sorted(a.feeds())]
    assert e1 == e2 and len(e1) == 2 * len(a.feeds())
    assert e1[0] != a.batch(0, 8)[sorted(a.feeds())[0]].tobytes()


def test_copy_target_equals_input():
    t = _make("copy", width=5, min_len=2, max_len=7)
    for step in range(5):
        d = t.batch(step, 4)
        L = int(d["mask"][0].sum())
        assert 2 <= L <= 7
        assert (d["x"][:, L, 5] == 1).all() and d["x"][:, :, 5].sum() == 4
        assert np.array_equal(d["y"][:, L + 1:2 * L + 1], d["x"][:, :L, :5])
        assert d["y"][d["mask"] == 0].sum() == 0


def test_repeat_copy_target():
    t = _make("repeat_copy", width=4, max_len=5, max_repeats=4)
    d = t.batch(1, 8)
    for b in range(8):
        L = int(np.flatnonzero(d["x"][b, :, 4])[0])
        R = int(round(d["x"][b, L + 1, 5] * 4))
        assert R == d["repeats"][b]
        seq = d["x"][b, :L, :4]
        s = L + 2
        assert np.array_equal(d["y"][b, s:s + R * L, :4], np.tile(seq, (R, 1)))
        assert d["y"][b, s + R * L, 4] == 1 and d["y"][b, :, 4].sum() == 1
        assert d["mask"][b].sum() == R * L + 1


def test_associative_recall_answer():
    t = _make("associative_recall", width=3, item_len=2, min_items=2, max_items=5)
    for step in range(4):
        d = t.batch(step, 8)
        for b in range(8):
            x = d["x"][b]
            starts = np.flatnonzero(x[:, 3])
            items = [x[s + 1:s + 3, :3] for s in starts]
            assert len({i.tobytes() for i in items}) == len(items)  # distinct
            q0, q1 = np.flatnonzero(x[:, 4])
            query = x[q0 + 1:q1, :3]
            pos = [k for k, it in enumerate(items) if np.array_equal(it, query)]
            assert len(pos) == 1 and pos[0] < len(items) - 1
            assert d["answer"][b] == pos[0] + 1
            m = d["mask"][b] > 0
            assert np.array_equal(d["y"][b][m], items[pos[0] + 1])


def test_sort_labels():
    d = _make("sort", n=12).batch(2, 32)
    assert np.array_equal(d["order"], np.argsort(d["x"], axis=1, kind="stable"))
    assert (np.diff(np.take_along_axis(d["x"], d["order"], 1), axis=1) >= 0).all()


def _brute_hull_edges(p):
    """Directed edges (i, j) with every other point strictly left of i -> j: the CCW hull."""
    p = p.astype(np.float64)
    edges = set()
    for i, j in itertools.permutations(range(len(p)), 2):
        c = (p[j, 0] - p[i, 0]) * (p[:, 1] - p[i, 1]) - (p[j, 1] - p[i, 1]) * (p[:, 0] - p[i, 0])
        c = np.delete(c, [i, j])
        if (c > 0).all():
            edges.add((i, j))
    return edges


@pytest.mark.parametrize("n", [3, 4, 7, 12])
def test_convex_hull_exact(n):
    d = _make("convex_hull", n=n).batch(n, 24)
    for b in range(24):
        L = int(d["hull_len"][b])
        hull = [int(i) for i in d["hull"][b, :L]]
        assert (d["hull"][b, L:] == -1).all()
        assert hull[0] == min(hull)
        assert set(zip(hull, hull[1:] + hull[:1])) == _brute_hull_edges(d["points"][b])


def test_convex_hull_collinear_and_duplicates():
    pts = np.array([[1, 1], [0, 0], [1, 0], [0.5, 0], [0.5, 0.5], [0, 1], [1, 1]], np.float32)
    assert convex_hull(pts) == [0, 5, 1, 2]  # midpoint 3 and interior 4 are no vertices, 6 duplicates 0


def _tour_length(p, tour):
    return sum(math.dist(p[a], p[b]) for a, b in zip(tour, tour[1:] + tour[:1]))


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_tsp_optimal_against_brute_force(n):
    d = _make("tsp", n=n).batch(n, 12)
    for b in range(12):
        p = d["points"][b].astype(np.float64)
        tour = [int(i) for i in d["tour"][b]]
        assert sorted(tour) == list(range(n)) and tour[0] == 0 and tour[1] < tour[-1]
        best = min(([0, *perm] for perm in itertools.permutations(range(1, n)) if perm[0] < perm[-1]),
                   key=lambda t: _tour_length(p, t))
        assert _tour_length(p, tour) == pytest.approx(_tour_length(p, best), abs=1e-9)
        assert tour == best
        assert d["tour_len"][b] == pytest.approx(_tour_length(p, best), rel=1e-6)


def test_nth_farthest_answer():
    t = _make("nth_farthest", vectors=5, dim=3)
    d = t.batch(0, 64)
    for b in range(64):
        x = d["x"][b]
        vec = x[:, :3].astype(np.float64)
        assert np.array_equal(x[:, 3:8], np.eye(5))
        n, m = int(np.argmax(x[0, 8:13])), int(np.argmax(x[0, 13:18]))
        dist = [np.linalg.norm(vec[k] - vec[m]) for k in range(5)]
        ranked = sorted(range(5), key=lambda k: (-dist[k], k))
        assert d["target"][b] == ranked[n]


@pytest.mark.parametrize("mode", ["reverse", "copy"])
def test_seq2seq(mode):
    d = _make("seq2seq", mode=mode, symbols=5, min_len=2, max_len=9).batch(3, 16)
    for b in range(16):
        L = int(d["src_len"][b])
        src = d["src"][b, :L]
        ans = src[::-1] if mode == "reverse" else src
        assert (src >= 3).all() and (d["src"][b, L:] == 0).all()
        assert np.array_equal(d["tgt_out"][b, :L], ans) and d["tgt_out"][b, L] == 2
        assert d["tgt_in"][b, 0] == 1 and np.array_equal(d["tgt_in"][b, 1:L + 1], ans)


@pytest.mark.parametrize("max_gap", [0, 2])
def test_ctc_frames_spell_the_labels(max_gap):
    t = _make("ctc_spectrogram", classes=6, features=24, max_labels=7, max_gap=max_gap, noise=0.0)
    tpl = t.templates()
    d = t.batch(1, 32)
    for b in range(32):
        n, L = int(d["input_len"][b]), int(d["label_len"][b])
        frames = d["x"][b, :n]
        assert (d["x"][b, n:] == 0).all() and (d["labels"][b, L:] == 0).all()
        per_frame = [int(np.argmin(((tpl - f) ** 2).sum(-1))) for f in frames]
        collapsed = [c for k, c in enumerate(per_frame) if c and (k == 0 or per_frame[k - 1] != c)]
        assert collapsed == list(d["labels"][b, :L])  # greedy CTC decoding of clean frames


def test_graph_properties_exact():
    import networkx as nx
    d = _make("graph_properties", min_nodes=1, max_nodes=12, edge_prob=0.3).batch(0, 40)
    for b in range(40):
        n = int(d["node_mask"][b].sum())
        adj = d["adj"][b]
        assert (adj == adj.T).all() and (np.diag(adj) == 0).all() and adj[n:].sum() == 0
        g = nx.from_numpy_array(adj[:n, :n])
        want = [g.number_of_edges(), sum(nx.triangles(g).values()) // 3, nx.number_connected_components(g)]
        assert list(d["target"][b]) == want
        assert np.allclose(d["nodes"][b, :n, 1] * 12, adj[:n].sum(1))


def test_sort_of_clevr_answers_from_state():
    d = _make("sort_of_clevr", seed=1).batch(0, 300)
    names = ["yes", "no", "rectangle", "circle", "1", "2", "3", "4", "5", "6"]
    seen = set()
    for b in range(300):
        st, q = d["state"][b], d["question"][b]
        xy = np.rint(st[:, :2] * 75).astype(int)
        assert np.array_equal(xy, d["centres"][b]) and np.array_equal(st[:, 3:], np.eye(6))
        shapes = ["circle" if v else "rectangle" for v in st[:, 2]]
        c, rel, sub = int(np.argmax(q[:6])), int(np.argmax(q[6:8])), int(np.argmax(q[8:]))
        assert q.sum() == 3
        dist = [((xy[k] - xy[c]) ** 2).sum() for k in range(6)]
        others = sorted((dist[k], k) for k in range(6) if k != c)
        want = [[shapes[c], "yes" if xy[c, 0] < 37.5 else "no", "yes" if xy[c, 1] < 37.5 else "no"],
                [shapes[others[0][1]], shapes[max(range(6), key=lambda k: (dist[k], -k))],
                 str(shapes.count(shapes[c]))]][rel][sub]
        assert names[d["answer"][b]] == want
        seen.add((rel, sub))
    assert len(seen) == 6


def test_sort_of_clevr_images_draw_the_scene():
    img_t, st_t = _make("sort_of_clevr", form="image", seed=2), _make("sort_of_clevr", seed=2)
    d, s = img_t.batch(4, 20), st_t.batch(4, 20)
    assert np.array_equal(d["answer"], s["answer"]) and np.array_equal(d["centres"], s["centres"])
    colours = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0.5, 0], [0.5, 0.5, 0.5], [1, 1, 0]]
    for b in range(20):
        img = d["image"][b]
        for k, (x, y) in enumerate(d["centres"][b]):
            assert np.array_equal(img[:, y, x], colours[k])
            corner = img[:, y + 4, x + 4]
            assert np.array_equal(corner, colours[k] if not d["circle"][b, k] else [1, 1, 1])
            area = (img == np.array(colours[k], np.float32)[:, None, None]).all(0).sum()
            assert area == 100 if not d["circle"][b, k] else 60 < area < 90


def test_preference_pairs():
    t = _make("preference_pairs", symbols=5, prompt_len=6, max_corrupt=3)
    d = t.batch(2, 10)
    ids, tg, m = d["ids"], d["targets"], d["response_mask"]
    assert np.array_equal(ids[:, 1:], tg[:, :-1])
    for i in range(10):
        ch, rj = np.append(ids[i], tg[i, -1]), np.append(ids[i + 10], tg[i + 10, -1])
        assert np.array_equal(ch[:7], rj[:7]) and ch[6] == 1  # shared prompt, then the separator
        assert np.array_equal(ch[7:], ch[:6][::-1])  # chosen: the prompt reversed
        assert 1 <= (ch[7:] != rj[7:]).sum() <= 3 and (rj[7:] >= 2).all()
        assert np.array_equal(tg[i][m[i] > 0], ch[7:])


def test_retrieval_target_is_the_only_match():
    t = _make("retrieval", vocab=20, passages=6, passage_len=12, query_len=2)
    d = t.batch(0, 50)
    for b in range(50):
        q = list(d["query"][b])
        hits = [k for k in range(6) if any(list(d["passages"][b, k, s:s + 2]) == q for s in range(11))]
        assert hits == [d["target"][b]]


def test_char_corpus_split_and_vocab(tmp_path):
    text = "".join(chr(97 + (i * 7) % 13) for i in range(2000)) + "é\n"
    f = tmp_path / "corpus.txt"
    f.write_text(text, encoding="utf-8")
    t = _make("char_corpus", path=str(f), seq_len=20, valid_fraction=0.25)
    assert t.vocab == sorted(set(text))
    assert t.decode(t.train) + t.decode(t.valid) == text and len(t.valid) == int(len(text) * 0.25)
    d = t.batch(7, 4)
    for b in range(4):
        s = t.decode(d["ids"][b]) + t.decode(d["targets"][b][-1:])
        assert s in t.decode(t.train) and t.decode(d["targets"][b]) == s[1:]
    ev = list(t.eval_batches(3))
    assert len(ev) == (len(t.valid) - 1) // 20 // 3
    assert t.decode(ev[0]["ids"].reshape(-1)) == t.decode(t.valid[:60])
    t2 = _make("char_corpus", path=str(f), seq_len=20, valid_fraction=0.25)
    assert t2.vocab == t.vocab and [e["ids"].tobytes() for e in t2.eval_batches(3)] == [
        e["ids"].tobytes() for e in ev]


def test_word_corpus(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("the cat sat\non the mat\n" * 30 + "a rare word\n" * 2, encoding="utf-8")
    t = _make("word_corpus", path=str(f), seq_len=6, vocab_size=6)
    assert t.vocab == ["<unk>", "<eos>", "the", "cat", "mat", "on"]  # by count, ties sorted
    assert t.decode(t.train[:8]) == "the cat <unk> <eos> on the mat <eos>"  # "sat" did not make it
    assert t.decode(t.valid[-4:]) == "<unk> <unk> <unk> <eos>"
    d = t.batch(0, 3)
    assert np.array_equal(d["ids"][:, 1:], d["targets"][:, :-1])


def test_tasks_do_not_import_torch():
    import subprocess
    import sys
    code = "import sys, nnspec.runtime.tasks as t; t.make_task('copy').batch(0, 2); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_default_corpus_is_bundled_and_stable():
    a, b = _make("char_corpus"), _make("char_corpus")
    assert a.vocab == b.vocab and len(a.train) > 100_000
    assert np.array_equal(a.valid, b.valid)


def test_corpus_errors(tmp_path, monkeypatch):
    with pytest.raises(TaskError, match="cannot read corpus"):
        _make("char_corpus", path=str(tmp_path / "missing.txt"))
    with pytest.raises(TaskError, match="not a regular file"):
        _make("char_corpus", path=str(tmp_path))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff\xfedef" * 20)
    with pytest.raises(TaskError, match=r"not UTF-8: byte 3 is b'\\xff'"):
        _make("char_corpus", path=str(bad))
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 3)
    with pytest.raises(TaskError, match="training split has 27 characters; seq_len 50 needs at least 51"):
        _make("char_corpus", path=str(short))
    with pytest.raises(TaskError, match="validation split has 3 characters; seq_len 5 needs at least 6"):
        _make("char_corpus", path=str(short), seq_len=5)
    monkeypatch.setattr(text_tasks, "MAX_CORPUS_BYTES", 10)
    with pytest.raises(TaskError, match="at most 10"):
        _make("char_corpus", path=str(short))


@pytest.mark.parametrize("name, opts, match", [
    ("copy", {"width": 0}, "width: Input should be greater than or equal to 1"),
    ("copy", {"max_len": 10**6}, "max_len: Input should be less than or equal to 256"),
    ("copy", {"min_len": 9, "max_len": 3}, "min_len .9. is larger than max_len .3."),
    ("copy", {"width": "8"}, "width: Input should be a valid integer"),
    ("copy", {"widht": 8}, "widht: Extra inputs are not permitted"),
    ("tsp", {"n": 11}, "n: Input should be less than or equal to 10"),
    ("associative_recall", {"width": 20, "item_len": 8}, "at most 60 bits"),
    ("associative_recall", {"width": 1, "item_len": 2, "max_items": 5}, "exceeds the 4 distinct items"),
    ("seq2seq", {"mode": "shuffle"}, "mode: Input should be 'reverse' or 'copy'"),
    ("char_corpus", {"valid_fraction": 0.9}, "valid_fraction"),
    ("sort_of_clevr", {"image_size": 40}, "at least 12 . object_size .60."),
    ("ctc_spectrogram", {"min_frames": 4, "max_frames": 2}, "min_frames .4. is larger than max_frames .2."),
    ("retrieval", {"vocab": 16, "query_len": 1}, "would occur by chance"),
    ("preference_pairs", {"prompt_len": 2, "max_corrupt": 3}, "max_corrupt .3. is larger than prompt_len .2."),
    ("repeat_copy", {"min_repeats": 5, "max_repeats": 2}, "min_repeats .5. is larger than max_repeats .2."),
    ("copy", [("width", 3)], "must be a mapping"),
    ("nope", {}, "unknown task 'nope'"),
])
def test_bad_options(name, opts, match):
    with pytest.raises(TaskError, match=match):
        make_task(name, opts)


def test_batch_bounds():
    t = _make("copy")
    for bad in (0, 4097, True, 2.0):
        with pytest.raises(TaskError, match="batch_size must be an integer in"):
            t.batch(0, bad)
    with pytest.raises(TaskError, match="step must be an integer"):
        t.batch(-1, 4)
    with pytest.raises(TaskError, match="count must be an integer"):
        list(t.eval_batches(4, 0))
    with pytest.raises(TaskError, match="would hold about"):  # Held-Karp tables bounded before the work
        _make("tsp", n=10).batch(0, 4096)
    with pytest.raises(TaskError, match="would hold about"):
        _make("repeat_copy", width=64, max_len=64, max_repeats=64).batch(0, 64)


def test_mismatch_names_both_sides():
    inputs = load_spec("char_rnn").model.inputs
    check_against(_make("char_corpus"), inputs, "spec 'char_rnn'")  # range unevaluated: not compared
    with pytest.raises(TaskError) as e:
        check_against(_make("copy"), inputs, "spec 'char_rnn'")
    msg = str(e.value)
    assert "spec 'char_rnn' has input 'ids' (i64[N,T]) but task 'copy' does not feed it (it feeds x)" in msg
    assert "task 'copy' feeds 'x' (f32[N,41,9]) but spec 'char_rnn' has no input 'x'" in msg
    # the compiled graph carries the evaluated range: the bundled corpus has more characters than 65
    with pytest.raises(TaskError, match=r"feeds 'ids' with values in \[0, \d+\) but spec 'char_rnn' declares "
                                        r"its range as \[0, 65\)"):
        check_against(_make("char_corpus"), compile_spec("char_rnn").forward, "spec 'char_rnn'")
    with pytest.raises(TaskError, match=r"task 'sort' feeds 'x' as f32\[N,10\] but the spec declares it as "
                                        r"i64\[N,10\]"):
        check_against(_make("sort"), {"x": {"shape": ["N", 10], "dtype": "int64"}})
    with pytest.raises(TaskError, match=r"as f32\[N,10\] but the spec declares it as f32\[N,12\]"):
        check_against(_make("sort"), {"x": {"shape": ["N", 12], "dtype": "float32"}})
    check_against(_make("sort"), {"x": {"shape": ["N", "L"], "dtype": "float32"}})


# -- set_average (runtime/tasks/sequences.py) -------------------------------------------------------
def test_set_average_targets_are_the_normalised_mean():
    t = _make("set_average", d_model=32, seq_len=6, seed=2)
    b = t.batch(0, 5)
    assert b["x"].shape == b["targets"].shape == (5, 6, 32) and t.examples is None
    x = b["x"].astype(np.float64)
    m = x.mean(axis=1, keepdims=True)
    want = (m - m.mean(-1, keepdims=True)) / np.sqrt(m.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(b["targets"], np.broadcast_to(want, x.shape), rtol=1e-5, atol=1e-5)
    perm = b["x"][:, ::-1]  # a set function: permuting the sequence changes no target
    np.testing.assert_allclose(perm.astype(np.float64).mean(1), m[:, 0], atol=1e-6)
    raw = _make("set_average", d_model=32, seq_len=6, seed=2, normalise=False).batch(0, 5)
    np.testing.assert_allclose(raw["targets"], np.broadcast_to(m * np.sqrt(6), x.shape), rtol=1e-5, atol=1e-5)


def test_set_average_needs_attention():
    """The best position-wise linear map (least squares of targets[t] on x[t], fitted on the very
    data it is scored on) leaves about 1 - 1/T; the uniform average over the sequence leaves 0."""
    T, d = 8, 16
    b = _make("set_average", d_model=d, seq_len=T).batch(0, 2048)
    x, y = b["x"].reshape(-1, d).astype(np.float64), b["targets"].reshape(-1, d).astype(np.float64)
    w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)
    position_wise = ((np.c_[x, np.ones(len(x))] @ w - y) ** 2).mean()
    assert abs(position_wise - (1 - 1 / T)) < 0.05
    m = b["x"].astype(np.float64).mean(1)
    attended = (m - m.mean(-1, keepdims=True)) / np.sqrt(m.var(-1, keepdims=True) + 1e-5)
    assert ((attended[:, None] - b["targets"]) ** 2).mean() < 1e-10


def test_set_average_fits_the_transformer():
    check_against(_make("set_average"), compile_spec("transformer").forward, "spec 'transformer'")
    with pytest.raises(TaskError, match=r"feeds 'x' as f32\[N,16,64\]"):
        check_against(_make("set_average", d_model=64), compile_spec("transformer").forward, "spec 'transformer'")


# -- char_corpus' vocab_size ------------------------------------------------------------------------
def test_char_vocab_size_keeps_the_most_frequent(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("aaaa" + "ccc" + "bbb" + "dd" + "e" + "ff" + "a" * 40, encoding="utf-8")
    t = _make("char_corpus", path=str(path), seq_len=2, vocab_size=4)
    # counts a 44, b 3, c 3, d 2, f 2, e 1: a, then b before c on the tie; the rest read as OTHER
    assert t.vocab == ["a", "b", "c", text_tasks.OTHER]
    ids = np.concatenate([t.train, t.valid])
    assert t.decode(ids[:14]) == "aaaacccbbb" + text_tasks.OTHER * 4
    assert (ids == 3).sum() == 5 and ids.max() == 3
    assert _make("char_corpus", path=str(path), seq_len=2).vocab == list("abcdef")


def test_char_vocab_65_fits_char_rnn():
    t = _make("char_corpus", vocab_size=65)
    everything = _make("char_corpus")
    assert len(everything.vocab) > 65 and len(t.vocab) == 65 and t.vocab[-1] == text_tasks.OTHER
    ids = np.concatenate([t.train, t.valid])
    other = (ids == 64).mean()
    assert 0 < other < 0.01  # measured 0.55% of the default corpus' characters
    kept = set(t.vocab[:-1])
    counts = {ch: n for ch, n in zip(*np.unique(list(text_tasks.read_corpus(None)), return_counts=True))}
    assert min(counts[ch] for ch in kept) >= max(n for ch, n in counts.items() if ch not in kept)
    check_against(t, compile_spec("char_rnn").forward, "spec 'char_rnn'")
    assert t.examples == (len(t.train) - 1) // 50
