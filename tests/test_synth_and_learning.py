"""The synthetic catalogue has the promised structure, and federated training learns from it."""
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from federation.simulation import FederatedAutoencoder, Federation, FedSettings
from recsys.evaluation import evaluate_model
from recsys.loaders import load_dataset
from recsys.models.autoencoder import AEShape
from recsys.models.baselines import EASE, BiasedMF, Popularity
from recsys.splits import ratio_split
from recsys.synth import SynthSpec, generate, write_catalogue


def test_synth_structure(tmp_path):
    g = generate(SynthSpec(n_users=400, n_items=200, seed=0))
    inter = g["inter"]
    counts = inter.groupby("user_id").size()
    assert counts.min() >= 1 and counts.max() > 4 * counts.median()        # heavy-tailed activity
    pop = inter.groupby("item_id").size().sort_values(ascending=False)
    assert pop.iloc[: len(pop) // 10].sum() > 0.2 * len(inter)            # long-tail popularity
    assert set(inter["rating"].unique()) <= {1, 2, 3, 4, 5}
    assert all(c in t for c, t in zip(g["items"]["colour"], g["items"]["text"]))
    d = write_catalogue(SynthSpec(n_users=50, n_items=20, seed=0), tmp_path / "s", images=True, workers=1,
                        progress=False)
    from PIL import Image
    img = Image.open(d / "images" / "0.png")
    assert img.size == (64, 64)
    data = load_dataset(d)
    assert data.items.at[0, "image_path"] == "images/0.png"
    assert load_file(str(d / "ground_truth.safetensors"))["item_vec"].shape == (20, 16)


def test_images_show_every_visual_attribute():
    """Category (pictogram, lower right) and style (background) are visible, not only colour/shape/pattern."""
    from recsys.synth import render_item_image

    def px(**kw):
        args = {"colour": "red", "shape": "square", "pattern": "plain", "category": "bag", "style": "minimal", **kw}
        return np.asarray(render_item_image(**args), dtype=np.int16)

    base = px()
    corner, main = (slice(44, 64), slice(44, 64)), (slice(20, 30), slice(20, 30))
    for cat in ("shoe", "lamp", "clock"):
        other = px(category=cat)
        assert np.abs(other[corner] - base[corner]).sum() > 0 and np.array_equal(other[main], base[main])
    for style in ("modern", "vintage", "playful"):
        assert not np.array_equal(px(style=style)[0:4, 30:34], base[0:4, 30:34])      # background
    imgs = {(c, s): px(category=c, style=s).tobytes() for c in ("bag", "mug", "vase") for s in ("modern", "minimal")}
    assert len(set(imgs.values())) == 6


def test_catalogue_rerenders_images_of_another_renderer(tmp_path):
    import json

    from recsys.synth import catalogue_is_current

    spec = SynthSpec(n_users=30, n_items=12, seed=4)
    d = write_catalogue(spec, tmp_path / "s", images=True, workers=1, progress=False)
    assert catalogue_is_current(d, spec) and not catalogue_is_current(d, SynthSpec(n_users=31, n_items=12, seed=4))
    good = (d / "images" / "5.png").read_bytes()
    (d / "images" / "5.png").write_bytes(b"stale image from an older generator")
    man = json.loads((d / "MANIFEST.json").read_text())
    man["render_version"] = 1
    (d / "MANIFEST.json").write_text(json.dumps(man))
    assert not catalogue_is_current(d, spec)
    write_catalogue(spec, d, images=True, workers=1, progress=False)
    assert (d / "images" / "5.png").read_bytes() == good and catalogue_is_current(d, spec)
    assert not list((d / "images").glob(".*.tmp"))


@pytest.mark.slow
def test_federated_beats_popularity_on_synth(tmp_path):
    d = write_catalogue(SynthSpec(n_users=800, n_items=150, seed=2), tmp_path / "s", images=False, progress=False)
    data = load_dataset(d)
    split = ratio_split(data, seed=0)
    train = split.matrix(data, "train")
    fed = Federation(AEShape(data.n_items, 64, 32, mode="explicit"),
                     FedSettings(rounds=120, fraction=0.2, seed=0), train)
    for _ in range(120):
        fed.run_round()
    r = data.ratings.data
    fr = evaluate_model(FederatedAutoencoder(fed, (r.min(), r.max())), data, split, "test")["rmse"]
    pop = evaluate_model(Popularity().fit(train), data, split, "test")["rmse"]
    mf = evaluate_model(BiasedMF(epochs=30).fit(train, split.matrix(data, "valid")), data, split, "test")["rmse"]
    assert fr < pop - 0.05, (fr, pop)
    assert fr < mf + 0.1, (fr, mf)
    # implicit: EASE must find the taste groups far better than popularity
    assert evaluate_model(EASE(50).fit(train), data, split, "test", "implicit")["ndcg@10"] > \
        evaluate_model(Popularity().fit(train), data, split, "test", "implicit")["ndcg@10"]


def test_bench_reference_truth_follows_the_datasets_internal_order(tmp_path):
    """The cold-start benchmark's reference rows read the generator's truth by internal index; a
    misaligned row would silently score the wrong item, so check it against each item's own text."""
    from fedrec.bench.content import _Oracle, _truth
    from recsys.synth import ATTRIBUTES

    d = write_catalogue(SynthSpec(n_users=60, n_items=40, seed=3), tmp_path / "s", images=False, progress=False)
    for f in (d / "s.item", d / "s.inter"):          # reversed rows: internal order != generator order
        head, *rows = f.read_text().splitlines()
        f.write_text("\n".join([head, *rows[::-1]]) + "\n")
    data = load_dataset(d)
    assert [int(i) for i in data.item_ids[:3]] != [0, 1, 2]
    t = _truth(d, data)
    widths = [len(v) for v in ATTRIBUTES.values()]
    assert t["attributes"].shape == (data.n_items, sum(widths)) and (t["attributes"].sum(1) == len(widths)).all()
    raw = load_file(str(d / "ground_truth.safetensors"))
    for row in range(data.n_items):
        text = data.items.at[row, "text"].lower()
        off = 0
        for (name, values), w in zip(ATTRIBUTES.items(), widths):
            value = values[int(np.argmax(t["attributes"][row, off:off + w]))]
            assert value in text, (row, name, value, text)
            off += w
        np.testing.assert_array_equal(t["item_vec"][row], raw["item_vec"][int(data.item_ids[row])])
    users = np.array([0, 5])
    np.testing.assert_allclose(_Oracle(t["user_vec"], t["item_vec"]).score(users),
                               raw["user_vec"][[int(data.user_ids[u]) for u in users]] @ t["item_vec"].T, rtol=1e-6)


def test_choice_probs_by_hand():
    """The generator's choice distribution: a taste_share mix of taste (content softmax damped by
    popularity**0.3) and raw popularity; hand-computed for two items."""
    from recsys.synth import choice_probs, taste_probs

    spec = SynthSpec(taste_share=0.7, taste_temperature=2.0)
    iv, centre, pop = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([2.0, 0.0]), np.array([0.2, 0.8])
    t = np.array([np.e * 0.2 ** 0.3, 0.8 ** 0.3])                     # exp(iv . c / 2) * pop^0.3
    np.testing.assert_allclose(choice_probs(iv, centre, pop, spec), 0.7 * t / t.sum() + 0.3 * pop, rtol=1e-12)
    np.testing.assert_allclose(taste_probs(iv, centre, 2.0), [np.e / (np.e + 1), 1 / (np.e + 1)], rtol=1e-12)


def test_bayes_reference_infers_groups_from_history(tmp_path):
    """The cold-start bench's Bayes ceiling: its posterior equals a per-user sum of log choice
    probabilities, recovers most users' taste groups, and ranks by posterior-mixed taste."""
    from fedrec.bench.content import _BayesTaste, _truth
    from recsys.synth import choice_probs

    spec = SynthSpec(n_users=300, n_items=120, n_groups=4, seed=5)
    d = write_catalogue(spec, tmp_path / "s", images=False, progress=False)
    data = load_dataset(d)
    t = _truth(d, data)
    train = data.ratings.tocsr()
    b = _BayesTaste(t, train, spec)
    assert b.group_accuracy > 0.8, b.group_accuracy                      # 4 groups: chance is ~0.25
    g = t["group"]
    centres = np.stack([t["user_vec"][g == k].mean(0) for k in range(4)])
    u = 7
    items = train[u].indices
    ll = np.array([np.log(choice_probs(t["item_vec"], c, t["popularity"], spec)[items]).sum() for c in centres])
    np.testing.assert_allclose(b.post[u], np.exp(ll - ll.max()) / np.exp(ll - ll.max()).sum(), rtol=1e-8)
    np.testing.assert_allclose(b.score(np.array([u]))[0], np.log(b.post[u] @ b.taste), rtol=1e-10)
    assert b.taste.shape == (4, data.n_items) and np.allclose(b.taste.sum(1), 1)


def test_bench_tables_show_seconds_to_two_places_and_metrics_to_four():
    from fedrec.bench.suite import _table

    md = _table("t", ["model", "NDCG@10", "train s", "wall s (incl. start)"], [["a", 0.29494, 8.8, 123.45]])
    assert md.splitlines()[-1] == "| a | 0.2949 | 8.80 | 123.5 |"


def test_memory_bench_measures_the_job_not_the_process_that_started_it():
    # Linux keeps a parent's RSS high-water mark across fork + exec in ru_maxrss; a 400 MiB parent must
    # not show up in a child that allocates next to nothing, and a child's own 200 MiB must.
    from fedrec.bench.suite import child_peak_rss_mib

    ballast = np.ones(400 * 2**20 // 8)                                   # 400 MiB, touched
    small = child_peak_rss_mib("x = 1")
    big = child_peak_rss_mib("b = bytearray(200 * 2**20)\nb[::4096] = b'1' * len(b[::4096])")
    assert ballast.sum() > 0
    assert small < 100, (small, big)                                      # an interpreter, not the 400 MiB parent
    # 200.1 MiB measured; the two interpreters' own pages differ by a few, so not exactly >= 200
    assert 190 <= big - small < 230, (small, big)
