"""Label-set confusions on /evaluation and the gallery's exact label-set filter (?truth=...&predicted=...)."""

import re
from collections import Counter
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest

from model.modeldir import read_model_dir
from model.thresholds import apply_thresholds

pytestmark = pytest.mark.needs_data

ROW = re.compile(r'<a href="(/gallery\?[^"]+)">(\d+)</a>')


def stored_label_sets():
    """(true set, predicted set) of every stored test photo, counted here from the CSV and thresholds.json."""
    info = read_model_dir(None)
    names, truth, probs = info.test_predictions()
    predicted = apply_thresholds(probs, info.thresholds, info.at_least_one)
    sets = lambda row: " ".join(l for l, on in zip(info.labels, row) if on)  # noqa: E731
    return {name: (sets(t), sets(p)) for name, t, p in zip(names, truth, predicted)}


def confusion_rows(client):
    html = client.get("/evaluation").get_data(as_text=True)
    section = html.split('id="label-sets"', 1)[1].split("</section>", 1)[0]
    return section, [(unescape(url), int(n)) for url, n in ROW.findall(section)]


def sets_of(url):
    """(truth, predicted) query values of a gallery link."""
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    return query["truth"][0], query["predicted"][0]


def gallery_ids(client, url):
    """Photo ids the gallery shows for `url`, over all its pages."""
    ids, page = [], 1
    while True:
        html = client.get(f"{url}&page={page}").get_data(as_text=True)
        ids += [int(i) for i in re.findall(r'<a href="/photo/(\d+)">', html)]
        if "next →" not in html:
            return ids
        page += 1


def test_confusion_counts_equal_a_count_of_the_stored_predictions(client):
    expected = Counter(pair for pair in stored_label_sets().values() if pair[0] != pair[1])
    section, rows = confusion_rows(client)
    assert len(rows) == len(expected) > 5
    counts = [n for _, n in rows]
    assert counts == sorted(counts, reverse=True)  # most frequent first
    assert sum(counts) == sum(expected.values())
    for url, n in rows:
        assert expected[sets_of(url)] == n, url
    mismatched = sum(expected.values())
    assert f"{400 - mismatched} of 400 test photos get exactly their true label set" in section


def test_each_confusion_link_shows_exactly_those_photos(client, scenes):
    stored = stored_label_sets()
    _, rows = confusion_rows(client)
    position = {name: i + 1 for i, name in enumerate(scenes.dataset.images)}
    for url, n in rows:
        pair = sets_of(url)
        expected = sorted(position[name] for name, sets in stored.items() if sets == pair)
        assert sorted(gallery_ids(client, url)) == expected and len(expected) == n, url


def test_empty_label_set_and_spellings(client, scenes):
    # The shipped model's "at least one label" rule (chosen on validation) leaves no photo without a label
    none_predicted = [t.photo_id for t in scenes.test_photos if not t.predicted.any()]
    assert len(none_predicted) == (0 if scenes.classifier.at_least_one else len(none_predicted))
    html = client.get("/gallery?predicted=").get_data(as_text=True)
    assert f"{len(none_predicted)} of 400 test photos" in html and "{} (no label)" in html
    assert sorted(gallery_ids(client, "/gallery?predicted=")) == sorted(none_predicted)
    sea_sunset = sorted(t.photo_id for t in scenes.test_photos if list(t.truth) == [0, 0, 1, 1, 0])
    for query in ["truth=sea+sunset", "truth=sunset,sea", "truth=sea%2Bsunset", "truth=%20sea%20%20sunset%20"]:
        assert sorted(gallery_ids(client, f"/gallery?{query}")) == sea_sunset, query
    # combined with the other filters, and carried by the form and the pager
    html = client.get("/gallery?truth=sea+sunset&sort=error").get_data(as_text=True)
    assert '<input type="hidden" name="truth" value="sea sunset">' in html
    assert "true labels are exactly <strong>{sea, sunset}</strong>" in html


@pytest.mark.parametrize(
    "query, word",
    [("truth=volcano", "'volcano'"), ("predicted=sea+Sea", "'Sea'"), ("truth=sea&predicted=sunset+x", "'x'")],
)
def test_unknown_labels_are_400(client, query, word):
    r = client.get(f"/gallery?{query}")
    text = r.get_data(as_text=True)
    assert (
        r.status_code == 400 and word in unescape(text) and "labels are desert, mountains, sea, sunset, trees" in text
    )
