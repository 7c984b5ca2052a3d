import numpy as np
import pytest
from scipy.io import savemat

from model.data import DataError, load_dataset, split
from tests.helpers import TINY_LABELS, make_tiny_dataset


def test_csv_dataset_labels_come_from_header(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    assert ds.label_names == TINY_LABELS
    assert ds.labels.shape == (36, 3) and set(np.unique(ds.labels)) <= {0, 1}
    assert ds.path(0).name == "1.jpg"


def test_dataset_from_environment(tiny_dataset, monkeypatch):
    monkeypatch.setenv("MIML_DATA", str(tiny_dataset))
    assert load_dataset().label_names == TINY_LABELS
    monkeypatch.delenv("MIML_DATA")
    with pytest.raises(DataError, match="MIML_DATA"):
        load_dataset()


def test_mat_layout(tmp_path):
    root = make_tiny_dataset(tmp_path / "kaggle", n=6)
    csv_labels = load_dataset(root).labels
    (root / "labels.csv").unlink()
    (root / "processed").mkdir()
    names = np.array([["desert"], ["sea"], ["trees"]], dtype=object)
    savemat(root / "processed" / "miml data.mat", {"targets": np.where(csv_labels.T > 0, 1, -1), "class_name": names})
    ds = load_dataset(root)
    assert ds.label_names == ["desert", "sea", "trees"]
    assert np.array_equal(ds.labels, csv_labels)


def test_mat_without_targets_names_the_file(tmp_path):
    root = make_tiny_dataset(tmp_path / "kaggle", n=3)
    (root / "labels.csv").unlink()
    (root / "processed").mkdir()
    savemat(root / "processed" / "miml data.mat", {"bags": np.zeros((3, 3))})
    with pytest.raises(DataError, match=r"miml data\.mat.*targets"):
        load_dataset(root)


@pytest.mark.parametrize(
    "content, message",
    [
        ("image,a,b\n1.jpg,1\n", "line 2"),
        ("image,a,b\n1.jpg,1,2\n", "line 2"),
        ("photo,a\n1.jpg,1\n", "header"),
        ("image,a,a\n1.jpg,1,0\n", "unique"),
        ("image,a\n../1.jpg,1\n", "invalid image name"),
        ("image,a\n", "no photos"),
    ],
)
def test_malformed_csv_names_file_and_problem(tmp_path, content, message):
    root = make_tiny_dataset(tmp_path / "d", n=2)
    (root / "labels.csv").write_text(content)
    with pytest.raises(DataError, match=message) as e:
        load_dataset(root)
    assert "labels.csv" in str(e.value)


def test_missing_directory_and_photo(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nowhere")
    root = make_tiny_dataset(tmp_path / "d", n=3)
    (root / "original" / "2.jpg").unlink()
    with pytest.raises(DataError, match=r"2\.jpg"):
        load_dataset(root)


def test_unreadable_photo_is_named(tmp_path):
    root = make_tiny_dataset(tmp_path / "d", n=3)
    (root / "original" / "3.jpg").write_text("not a photo")
    with pytest.raises(DataError, match=r"3\.jpg"):
        load_dataset(root).load_photos([0, 1, 2], 32)


def test_contract_split_is_the_original_projects():
    train, val, test = split(2000)
    assert (len(train), len(val), len(test)) == (1280, 320, 400)
    assert list(test[:5] + 1) == [1026, 1209, 1056, 368, 816]  # train_test_split(1..2000, 0.2, random_state=100)
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))
    again = split(2000)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))


def test_other_split_seeds_differ():
    assert set(split(2000, 1)[2]) != set(split(2000)[2])
