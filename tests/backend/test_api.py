"""The API against what the run directories hold, on every database.

Expected values come from the run's own files (pandas, NumPy, scikit-learn, SciPy), never
from the database, so a wrong query or a lost row shows up as a difference.
"""

from __future__ import annotations

import csv
import io
import json
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipmem.scoring.columns import DETECTOR_SCORES


def files(run_dir):
    """scores.parquet joined with samples.parquet, plus each pair's pair_index (row in samples.parquet)."""
    samples = pd.read_parquet(run_dir / "samples.parquet")
    samples["pair_index"] = np.arange(len(samples))
    scores = pd.read_parquet(run_dir / "scores.parquet")
    return scores.merge(samples[["sample_id", "captions", "image_ref", "pair_index"]], on="sample_id"), samples


def walk(client, run, **params):
    """Every page of a listing: (sample ids in order, totals reported)."""
    ids, totals, cursor = [], set(), None
    while True:
        response = client.get(f"/runs/{run}/samples", params={**params, **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        page = response.json()
        ids += [item["sample_id"] for item in page["items"]]
        totals.add(page["total"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, totals


def url_id(sample_id: str) -> str:
    return quote(sample_id, safe="")


def test_runs_list_and_detail(client, fake_runs):
    names = {run["name"] for run in client.get("/runs").json()}
    assert {"alpha", "beta", "shards", "mem"} <= names
    detail = client.get("/runs/alpha").json()
    scores, samples = files(fake_runs["alpha"])
    assert detail["split_sizes"] == samples["split"].value_counts().to_dict()
    assert detail["utility"]["f"]["i2t_r1"] == 0.5 and detail["settings"]["train"]["model"] == "clipmem-tiny"
    by_truth = {row["truth"]: row for row in detail["score_summary"]["by_truth"]}
    for truth, group in scores.groupby("truth"):
        assert by_truth[truth]["pairs"] == len(group)
        assert by_truth[truth]["means"]["clipmem"] == pytest.approx(group["clipmem"].mean())
    assert detail["mean_clipmem"] == pytest.approx(scores["clipmem"].mean())
    assert "mem_image" not in detail["score_names"]
    assert "mem_image" in client.get("/runs/mem").json()["score_names"]


def test_a_fine_tuned_runs_base_and_lock_are_in_its_detail_and_a_scratch_run_has_none(db, client, tmp_path):
    import hashlib
    from dataclasses import asdict

    from clipmem.backend.ingest import ingest
    from clipmem.backend.synthetic_run import write_synthetic_run
    from clipmem.scoring.config import TrainConfig

    base = tmp_path / "bases" / "base-f.pt"
    base.parent.mkdir()
    base.write_bytes(b"weights of a base")
    digest = hashlib.sha256(b"weights of a base").hexdigest()
    # config.json's train section as TrainConfig writes it for --pretrained FILE --lock-text
    train = asdict(TrainConfig(model="clipmem-tiny", pretrained=str(base), pretrained_sha256=digest, lock_text=True,
                               lock_text_unlocked_layers=1))
    run = write_synthetic_run(tmp_path / "tuned", 20, 20, 10, 5, seed=22, train=train)
    ingest(db.engine, run)
    try:
        listed = {r["name"]: r["base"] for r in client.get("/runs").json()}
        detail = client.get("/runs/tuned").json()["base"]
        assert detail == listed["tuned"] == {
            "pretrained": str(base), "file_name": "base-f.pt", "sha256": digest,
            "lock_image": False, "lock_image_unlocked_groups": 0, "lock_image_freeze_bn_stats": False,
            "lock_text": True, "lock_text_unlocked_layers": 1, "lock_text_freeze_layer_norm": False}
    finally:
        client.delete("/runs/tuned")
    # alpha's config.json predates fine-tuning (no pretrained, no lock_* keys): from scratch, nothing locked
    scratch = client.get("/runs/alpha").json()["base"]
    assert scratch["pretrained"] is None and scratch["file_name"] is None and scratch["sha256"] is None
    assert not scratch["lock_image"] and not scratch["lock_text"]


@pytest.mark.parametrize("sort,order", [("clipmem", "desc"), ("clipscore_g", "asc"), ("align_f", "desc"),
                                        ("clipmem_contrastive_raw", "asc")])
def test_pages_follow_sort_order(client, fake_runs, sort, order):
    scores, _ = files(fake_runs["alpha"])
    expected = scores.sort_values([sort, "pair_index"], ascending=order == "asc")["sample_id"].tolist()
    ids, totals = walk(client, "alpha", sort=sort, order=order, limit=17)
    assert ids == expected and totals == {len(expected)}


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_ties_are_paged_by_pair_index(db, client, tmp_path, order):
    from clipmem.backend.ingest import ingest
    from clipmem.backend.synthetic_run import write_synthetic_run
    from clipmem.scoring.rundir import RunDir

    run = write_synthetic_run(tmp_path / f"tied-{order}", 30, 30, 10, 5, seed=21)
    scores = pd.read_parquet(run / "scores.parquet")
    scores["clipmem"] = scores["clipmem"].round(1)  # a handful of values, many pairs each
    scores.to_parquet(run / "scores.parquet", index=False)
    RunDir(run).mark_finished()  # checksums of the edited file, as a scorer writing it would record
    ingest(db.engine, run)
    try:
        scores, _ = files(run)
        expected = scores.sort_values(["clipmem", "pair_index"], ascending=order == "asc")["sample_id"].tolist()
        ids, _ = walk(client, run.name, order=order, limit=4)
        assert ids == expected
    finally:
        client.delete(f"/runs/{run.name}")


@pytest.mark.parametrize("params", [
    {"truth": ["swapped", "vague"]},
    {"split": ["candidate"], "clipmem_min": 0.3},
    {"clipscore_g_min": 0.3, "clipscore_g_max": 0.6, "align_f_max": 0.7},
    {"caption": "RED"},
    {"caption": "is blue", "split": ["independent"]},
    {"caption": "100%_x"},
])
def test_filters_select_what_pandas_selects(client, fake_runs, params):
    scores, _ = files(fake_runs["alpha"])
    keep = np.ones(len(scores), dtype=bool)
    for key, value in params.items():
        if key in ("truth", "split"):
            keep &= scores[key].isin(value).to_numpy()
        elif key == "caption":
            keep &= scores["captions"].map(lambda caps: any(value.lower() in c.lower() for c in caps)).to_numpy()
        elif key.endswith("_min"):
            keep &= (scores[key[:-4]] >= value).to_numpy()
        else:
            keep &= (scores[key[:-4]] <= value).to_numpy()
    expected = scores[keep].sort_values(["clipmem", "pair_index"], ascending=False)["sample_id"].tolist()
    ids, totals = walk(client, "alpha", limit=500, **params)
    assert ids == expected and totals == {len(expected)}


def test_optional_scores_sort_and_filter(client, fake_runs):
    scores, _ = files(fake_runs["mem"])
    expected = scores[scores["mem_text"] >= 0.5].sort_values(["mem_text", "pair_index"])["sample_id"].tolist()
    ids, _ = walk(client, "mem", sort="mem_text", order="asc", mem_text_min=0.5)
    assert ids == expected
    response = client.get("/runs/alpha/samples", params={"sort": "mem_image"})
    assert response.status_code == 422 and "run 'alpha' has no mem_image scores" in response.text


@pytest.mark.parametrize("path,params,needle", [
    ("/runs/alpha/samples", {"limit": 0}, "limit"),
    ("/runs/alpha/samples", {"limit": 501}, "limit"),
    ("/runs/alpha/samples", {"sort": "nonsense"}, "sort"),
    ("/runs/alpha/samples", {"order": "up"}, "order"),
    ("/runs/alpha/samples", {"clipmem_min": "abc"}, "clipmem_min"),
    ("/runs/alpha/samples", {"clipmem_min": "nan"}, "clipmem_min"),
    ("/runs/alpha/samples", {"clipmem_min": 0.9, "clipmem_max": 0.1}, "clipmem_min (0.9) is greater than"),
    ("/runs/alpha/samples", {"bogus": 1}, "bogus"),
    ("/runs/alpha/samples", {"split": "shared"}, "split"),
    ("/runs/alpha/samples", {"cursor": "not-a-cursor"}, "cursor is malformed"),
    ("/runs/alpha/samples", {"tag": "a/b"}, "tag"),
    ("/runs/alpha/histogram", {"bins": 0}, "bins"),
    ("/runs/alpha/histogram", {"lo": 1, "hi": 0}, "hi (0.0) must be greater than lo"),
    ("/runs/alpha/neighbours/pair-0000200", {"k": 101}, "k"),
    ("/runs/alpha/images/pair-0000200", {"size": 8}, "size"),
    ("/runs/alpha/maps", {"max_points": 0}, "max_points"),
    ("/runs/alpha/maps", {"modality": "audio"}, "modality"),
    ("/comparisons", {"run_a": "alpha"}, "run_b"),
    ("/runs/bad name/samples", {}, "run"),
])
def test_bad_parameters_are_422_naming_them(client, path, params, needle):
    response = client.get(path, params=params)
    assert response.status_code == 422, response.text
    assert needle in response.text


def test_cursor_of_another_sort_is_refused(client):
    cursor = client.get("/runs/alpha/samples", params={"limit": 2}).json()["next_cursor"]
    response = client.get("/runs/alpha/samples", params={"limit": 2, "cursor": cursor, "sort": "align_f"})
    assert response.status_code == 422 and "cursor belongs to sort=clipmem" in response.text


def test_unknown_run_and_sample_are_404(client):
    assert client.get("/runs/nope/samples").status_code == 404
    response = client.get("/runs/alpha/samples/no-such-pair")
    assert response.status_code == 404 and "run 'alpha' has no sample 'no-such-pair'" in response.text
    assert client.get("/comparisons", params={"run_a": "alpha", "run_b": "nope"}).status_code == 404


def test_sample_detail(client, fake_runs):
    scores, samples = files(fake_runs["mem"])
    row = scores.iloc[5]
    detail = client.get(f"/runs/mem/samples/{url_id(row['sample_id'])}").json()
    assert detail["sample_id"] == row["sample_id"] and "/" in detail["sample_id"]
    assert detail["captions"] == list(row["captions"]) and detail["truth"] == row["truth"]
    assert detail["align_f"] == pytest.approx(row["align_f"]) and detail["align_g"] == pytest.approx(row["align_g"])
    assert detail["scores"]["mem_swap_text"] == pytest.approx(row["mem_swap_text"])
    assert detail["views_f"] == pytest.approx(list(row["views_f"]))
    assert detail["attributes"] == json.loads(samples.loc[samples["sample_id"] == row["sample_id"],
                                                          "attributes"].item())
    assert detail["has_embedding"] and detail["seen_by"] == row["seen_by"]
    shared = samples[samples["split"] == "shared"]["sample_id"].iloc[0]
    detail = client.get(f"/runs/mem/samples/{url_id(shared)}").json()
    assert detail["scores"] is None and detail["seen_by"] is None and not detail["has_embedding"]


def test_neighbours_match_brute_force(client, fake_runs):
    with np.load(fake_runs["alpha"] / "embeddings.npz") as npz:
        ids = npz["sample_id"].astype(str)
        emb = {k: npz[k].astype(np.float16).astype(np.float32) for k in ("f_image", "f_text", "g_image", "g_text")}
    row = 7
    result = client.get(f"/runs/alpha/neighbours/{ids[row]}", params={"k": 5}).json()
    for model in ("f", "g"):
        caption_sims = emb[f"{model}_text"] @ emb[f"{model}_image"][row]
        image_sims = emb[f"{model}_image"] @ emb[f"{model}_text"][row]
        for key, sims in (("captions_near_image", caption_sims), ("images_near_caption", image_sims)):
            got = result[model][key]
            assert [n["similarity"] for n in got] == pytest.approx(np.sort(sims)[::-1][:5], abs=1e-5)
            assert [n["sample_id"] for n in got] == [ids[i] for i in np.lexsort((np.arange(len(sims)), -sims))[:5]]
            assert all(n["same_pair"] == (n["sample_id"] == ids[row]) for n in got)
    shared = pd.read_parquet(fake_runs["alpha"] / "samples.parquet").query("split == 'shared'")["sample_id"].iloc[0]
    response = client.get(f"/runs/alpha/neighbours/{shared}")
    assert response.status_code == 404 and "has no embeddings" in response.text


def test_histogram_matches_numpy(client, fake_runs):
    scores, _ = files(fake_runs["alpha"])
    result = client.get("/runs/alpha/histogram", params={"score": "clipscore_g", "bins": 12, "by_truth": True,
                                                         "split": ["independent"]}).json()
    values = scores["clipscore_g"]
    counts, edges = np.histogram(values[scores["split"] == "independent"], bins=12, range=(values.min(), values.max()))
    assert result["counts"] == counts.tolist() and result["edges"] == pytest.approx(edges)
    assert result["matched"] == int((scores["split"] == "independent").sum()) and result["outside"] == 0
    assert np.sum(list(result["by_truth"].values()), axis=0).tolist() == result["counts"]
    assert set(result["by_truth"]) == set(scores["truth"])
    inner = client.get("/runs/alpha/histogram", params={"bins": 4, "lo": 0.25, "hi": 0.75}).json()
    inside = scores["clipmem"].between(0.25, 0.75)
    assert sum(inner["counts"]) == inside.sum() and inner["outside"] == (~inside).sum()


def test_maps(client, fake_runs):
    scores, samples = files(fake_runs["alpha"])
    everything = client.get("/runs/alpha/maps", params={"modality": "text", "max_points": 50_000}).json()
    assert everything["total_points"] == len(everything["sample_id"]) == len(scores) + (samples["split"] == "extra").sum()
    assert everything["method"] == "pca"
    by_id = dict(zip(scores["sample_id"], scores["clipmem"]))
    for sid, split, value in zip(everything["sample_id"], everything["split"], everything["score_value"]):
        assert value == (None if split == "extra" else pytest.approx(by_id[sid]))
    sample = client.get("/runs/alpha/maps", params={"max_points": 30}).json()
    assert len(sample["f_x"]) == 30 and sample == client.get("/runs/alpha/maps", params={"max_points": 30}).json()
    assert set(sample["sample_id"]) <= set(everything["sample_id"])


def test_detection_matches_sklearn(client, fake_runs):
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores, _ = files(fake_runs["alpha"])
    result = client.get("/runs/alpha/detection").json()
    for key, positive in (("faulty", scores["truth"] != "clean"), ("swapped", scores["truth"] == "swapped")):
        rows = {row["score"]: row for row in result[key]}
        assert set(rows) == set(DETECTOR_SCORES) & set(scores.columns)
        for name, row in rows.items():
            assert row["auroc"] == pytest.approx(roc_auc_score(positive, scores[name]))
            assert row["average_precision"] == pytest.approx(average_precision_score(positive, scores[name]))
            k = int(positive.sum())
            top = scores.assign(p=positive).sort_values(name, ascending=False, kind="stable").head(k)
            assert row["k"] == k and row["precision_at_k"] == pytest.approx(top["p"].mean())


def test_comparison(client, fake_runs):
    from scipy.stats import spearmanr

    a, _ = files(fake_runs["alpha"])
    b, _ = files(fake_runs["beta"])
    both = a.merge(b, on="sample_id", suffixes=("_a", "_b"))
    result = client.get("/comparisons", params={"run_a": "alpha", "run_b": "beta", "k": 20}).json()
    assert result["shared_pairs"] == len(both)
    assert result["spearman"] == pytest.approx(spearmanr(both["clipmem_a"], both["clipmem_b"]).statistic)
    top_a = set(both.nlargest(20, "clipmem_a")["sample_id"])
    top_b = set(both.nlargest(20, "clipmem_b")["sample_id"])
    assert result["top_k_overlap"] == len(top_a & top_b) and result["k"] == 20
    tags = {row["truth"]: row for row in result["by_truth"]}
    for truth, group in both.groupby("truth_a"):
        assert tags[truth]["pairs"] == len(group)
        assert tags[truth]["mean_b"] == pytest.approx(group["clipmem_b"].mean())
    assert set(result["utility"]) == {"alpha", "beta"}
    assert client.get("/comparisons", params={"run_a": "alpha", "run_b": "shards"}).json()["shared_pairs"] == 0


def test_export_selection_csv(client, fake_runs):
    scores, _ = files(fake_runs["alpha"])
    response = client.get("/runs/alpha/exports/selection.csv", params={"truth": ["swapped", "vague"], "limit": 4,
                                                                       "sort": "clipscore_g"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    expected = (scores[scores["truth"].isin(["swapped", "vague"])]
                .sort_values(["clipscore_g", "pair_index"], ascending=False).head(4))
    assert [r["sample_id"] for r in rows] == expected["sample_id"].tolist()
    assert [float(r["clipscore_g"]) for r in rows] == expected["clipscore_g"].tolist()  # exact round trip


@pytest.mark.parametrize("model,splits", [("f", ("shared", "candidate")), ("g", ("shared", "independent"))])
def test_export_open_clip_training_csv(client, fake_runs, model, splits):
    scores, samples = files(fake_runs["alpha"])
    removed = set(scores.sort_values(["clipmem", "pair_index"], ascending=False).head(10)["sample_id"])
    response = client.get("/runs/alpha/exports/open_clip.csv", params={"limit": 10, "model": model})
    assert response.status_code == 200
    lines = list(csv.reader(io.StringIO(response.text), delimiter="\t"))
    assert lines[0] == ["filepath", "title"]
    root = json.loads((fake_runs["alpha"] / "data_root.json").read_text())["data_root"]
    kept = samples[samples["split"].isin(splits) & ~samples["sample_id"].isin(removed)]
    expected = [[f"{root}/{ref}", caption] for ref, caps in zip(kept["image_ref"], kept["captions"]) for caption in caps]
    assert lines[1:] == expected
    assert all(line[0].startswith("/") for line in lines[1:])


def test_open_clip_export_needs_plain_files(client):
    response = client.get("/runs/shards/exports/open_clip.csv")
    assert response.status_code == 409 and "WebDataset shards" in response.text


def test_tags_add_filter_remove(client, fake_runs):
    scores, _ = files(fake_runs["mem"])
    ids = scores["sample_id"].tolist()[:3]
    added = client.post("/runs/mem/tags/to check", json={"sample_ids": ids})
    assert added.json() == {"tag": "to check", "changed": 3, "pairs": 3}
    again = client.post("/runs/mem/tags/to check", json={"sample_ids": ids[:2]})
    assert again.json()["changed"] == 0
    assert {"tag": "to check", "pairs": 3} in client.get("/runs/mem/tags").json()
    listed, _ = walk(client, "mem", tag=["to check"])
    assert set(listed) == set(ids)
    assert client.get(f"/runs/mem/samples/{url_id(ids[0])}").json()["tags"] == ["to check"]
    page = client.get("/runs/mem/samples", params={"tag": ["to check"], "limit": 1}).json()
    assert page["total"] == 3 and page["items"][0]["tags"] == ["to check"]
    removed = client.delete("/runs/mem/tags/to check", params={"sample_id": ids[0]})
    assert removed.json() == {"tag": "to check", "changed": 1, "pairs": 2}
    missing = client.post("/runs/mem/tags/to check", json={"sample_ids": ["ghost-1", ids[1]]})
    assert missing.status_code == 404 and "'ghost-1'" in missing.text
    assert client.post("/runs/mem/tags/bad!tag", json={"sample_ids": ids}).status_code == 422
    assert client.delete("/runs/mem/tags/to check").json()["pairs"] == 0
    assert client.get("/runs/mem/tags").json() == []


def test_image_thumbnail_and_caching(client, fake_runs):
    _, samples = files(fake_runs["alpha"])
    sid, ref = samples.iloc[3][["sample_id", "image_ref"]]
    response = client.get(f"/runs/alpha/images/{sid}", params={"size": 96})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(response.content))
    assert max(img.size) == 96
    original = Image.open(fake_runs["alpha"] / "data" / ref).convert("RGB")
    assert np.array_equal(np.asarray(img.convert("RGB").resize(original.size, Image.NEAREST)), np.asarray(original))
    etag = response.headers["etag"]
    assert response.headers["cache-control"] == "private, no-cache"
    cached = client.get(f"/runs/alpha/images/{sid}", params={"size": 96}, headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b""
    other_size = client.get(f"/runs/alpha/images/{sid}", params={"size": 64})
    assert other_size.headers["etag"] != etag


def test_stored_shard_image(client):
    response = client.get("/runs/shards/images/pair-0000005", params={"size": 48})
    assert response.status_code == 200
    assert max(Image.open(io.BytesIO(response.content)).size) == 48


def test_health(client):
    from clipmem.backend.db import head_revision

    # the database is migrated to the newest revision
    assert client.get("/health").json() == {"status": "ok", "schema_revision": head_revision()}
    assert head_revision() == "0007"


def test_openapi_documents_every_parameter(client):
    schema = client.get("/openapi.json").json()
    undocumented = [f"{method.upper()} {path} {param['name']}"
                    for path, operations in schema["paths"].items() for method, operation in operations.items()
                    for param in operation.get("parameters", []) if not param.get("description")]
    assert undocumented == []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("description") or operation.get("summary"), f"{method} {path}"
    # every field of every response and request body (FastAPI's own validation-error bodies aside)
    undescribed = [f"{name}.{field}" for name, component in schema["components"]["schemas"].items()
                   if name not in ("HTTPValidationError", "ValidationError")
                   for field, spec in component.get("properties", {}).items() if not spec.get("description")]
    assert undescribed == []
