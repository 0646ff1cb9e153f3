"""The radiomics classifier: persistence without pickles, scaling, feature selection, fitting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from cem_node.pipeline.classifier import (
    AGE_FEATURE,
    FEATURES_FILE,
    MODEL_FILE,
    ClassifierError,
    RadiomicsClassifier,
)
from cem_node.training.radiomics_model import (
    fit_radiomics_classifier,
    select_features,
)

NAMES = ("original_firstorder_Mean_recombined", "wavelet-LH_glcm_Idmn_low_energy", "shape2D_area")
MEAN = np.array([100.0, 0.5, 40.0])
STD = np.array([20.0, 0.1, 0.0])  # the last feature was constant in training


def _train_booster(
    rng: np.random.Generator, n_inputs: int, n: int = 80, rounds: int = 20
) -> tuple[xgb.Booster, np.ndarray, np.ndarray]:
    """A booster trained on already z-scored inputs, and those inputs and labels."""
    inputs = rng.normal(size=(n, n_inputs))
    y = (inputs[:, 0] + 0.5 * inputs[:, 1] + rng.normal(scale=0.3, size=n) > 0).astype(int)
    params = {"objective": "binary:logistic", "max_depth": 2, "eta": 0.3, "nthread": 1, "seed": 0}
    booster = xgb.train(params, xgb.DMatrix(inputs, label=y), num_boost_round=rounds)
    return booster, inputs, y


def _rows(raw: np.ndarray, names: tuple[str, ...] = NAMES) -> list[dict[str, float]]:
    return [dict(zip(names, row.tolist(), strict=True)) for row in raw]


@pytest.fixture
def model() -> RadiomicsClassifier:
    booster, _, _ = _train_booster(np.random.default_rng(1), len(NAMES))
    return RadiomicsClassifier(booster, NAMES, MEAN.tolist(), STD.tolist())


@pytest.fixture
def raw() -> np.ndarray:
    rng = np.random.default_rng(2)
    return MEAN + rng.normal(size=(12, 3)) * np.array([20.0, 0.1, 5.0])


# --- inference and the scaler ----------------------------------------------------------------


def test_scaler_applied_matches_manual_computation(
    model: RadiomicsClassifier, raw: np.ndarray
) -> None:
    manual = (raw - MEAN) / np.where(STD == 0, 1.0, STD)
    manual[:, 2] = 0.0  # std 0 -> the feature value is 0
    expected = model.booster.predict(xgb.DMatrix(manual, feature_names=list(NAMES)))
    rows = _rows(raw)
    rows[0]["an_unselected_feature"] = 1e9  # extra features are ignored
    got = model.predict_proba(rows)
    assert got.shape == (12,)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    assert ((got > 0) & (got < 1)).all()
    assert model.predict_proba([]).shape == (0,)


def test_missing_feature_error_names_it(model: RadiomicsClassifier, raw: np.ndarray) -> None:
    rows = _rows(raw[:3])
    del rows[1]["wavelet-LH_glcm_Idmn_low_energy"]
    del rows[2]["shape2D_area"]
    with pytest.raises(ClassifierError) as error:
        model.predict_proba(rows)
    message = str(error.value)
    assert "wavelet-LH_glcm_Idmn_low_energy" in message
    assert "shape2D_area" in message
    assert "original_firstorder_Mean_recombined" not in message
    rows = _rows(raw[:1])
    rows[0]["shape2D_area"] = float("inf")
    with pytest.raises(ClassifierError, match=r"shape2D_area.*infinite"):
        model.predict_proba(rows)


def test_age_feature_and_missing_age() -> None:
    rng = np.random.default_rng(3)
    booster, _, _ = _train_booster(rng, len(NAMES) + 1)
    model = RadiomicsClassifier(booster, NAMES, MEAN.tolist(), STD.tolist(), use_age=True)
    assert model.input_names == (*NAMES, AGE_FEATURE)
    raw = MEAN + rng.normal(size=(4, 3))
    scaled = model.scale(raw)
    ages = [45.0, None, 70.0, float("nan")]
    column = np.array([45.0, np.nan, 70.0, np.nan])
    inputs = [*NAMES, AGE_FEATURE]
    expected = booster.predict(xgb.DMatrix(np.column_stack([scaled, column]), feature_names=inputs))
    np.testing.assert_array_equal(model.predict_proba(_rows(raw), ages), expected)
    unknown = booster.predict(
        xgb.DMatrix(np.column_stack([scaled, np.full(4, np.nan)]), feature_names=inputs)
    )
    np.testing.assert_array_equal(model.predict_proba(_rows(raw)), unknown)
    with pytest.raises(ClassifierError, match="3 ages for 4 rows"):
        model.predict_proba(_rows(raw), ages[:3])
    with pytest.raises(ClassifierError, match="age of row 0"):
        model.predict_proba(_rows(raw), [-1.0, 2.0, 3.0, 4.0])


def test_constructor_checks_consistency() -> None:
    booster, _, _ = _train_booster(np.random.default_rng(4), 2)
    with pytest.raises(ClassifierError, match="expects 2 inputs"):
        RadiomicsClassifier(booster, NAMES, MEAN.tolist(), STD.tolist())
    with pytest.raises(ClassifierError, match=r"no value for \['b'\]"):
        RadiomicsClassifier(booster, ["a", "b"], {"a": 0.0}, [1.0, 1.0])
    with pytest.raises(ClassifierError, match="negative"):
        RadiomicsClassifier(booster, ["a", "b"], [0.0, 0.0], [1.0, -1.0])
    with pytest.raises(ClassifierError, match="not unique"):
        RadiomicsClassifier(booster, ["a", "a"], [0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ClassifierError, match="reserved"):
        RadiomicsClassifier(booster, ["a", AGE_FEATURE], [0.0, 0.0], [1.0, 1.0])
    regression = xgb.train(
        {"objective": "reg:squarederror", "nthread": 1},
        xgb.DMatrix(np.eye(2), label=[0.0, 1.0]),
        num_boost_round=1,
    )
    with pytest.raises(ClassifierError, match="binary:logistic"):
        RadiomicsClassifier(regression, ["a", "b"], [0.0, 0.0], [1.0, 1.0])


# --- persistence -----------------------------------------------------------------------------


def test_save_load_round_trip_is_plain_json(
    model: RadiomicsClassifier, raw: np.ndarray, tmp_path: Path
) -> None:
    model_path, features_path = model.save(tmp_path / "bundle")
    assert (model_path.name, features_path.name) == (MODEL_FILE, FEATURES_FILE)
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == sorted(
        [MODEL_FILE, FEATURES_FILE]
    )
    for path in (model_path, features_path):
        data = path.read_bytes()
        assert not data.startswith(b"\x80"), "a pickle"
        assert b"pickle" not in data
        json.loads(data)  # valid JSON
    model_document = json.loads(model_path.read_bytes())
    assert model_document["learner"]["objective"]["name"] == "binary:logistic"
    assert model_document["learner"]["feature_names"] == list(NAMES)
    document = json.loads(features_path.read_text())
    assert document == {
        "format": 1,
        "selected_features": list(NAMES),
        "scaler": {
            "mean": dict(zip(NAMES, MEAN.tolist(), strict=True)),
            "std": dict(zip(NAMES, STD.tolist(), strict=True)),
        },
        "use_age": False,
    }
    loaded = RadiomicsClassifier.load(model_path, features_path)
    assert loaded.selected_features == NAMES
    assert loaded.use_age is False
    np.testing.assert_array_equal(loaded.predict_proba(_rows(raw)), model.predict_proba(_rows(raw)))


def test_load_errors(model: RadiomicsClassifier, tmp_path: Path) -> None:
    model_path, features_path = model.save(tmp_path)
    good = json.loads(features_path.read_text())

    def load_with(document: object, text: str | None = None) -> None:
        broken = tmp_path / "broken.json"
        broken.write_text(text if text is not None else json.dumps(document))
        RadiomicsClassifier.load(model_path, broken)

    with pytest.raises(ClassifierError, match=r"not valid JSON.*line 1"):
        load_with(None, text='{"format": 1,')
    with pytest.raises(ClassifierError, match="format 2 is not supported"):
        load_with({**good, "format": 2})
    with pytest.raises(ClassifierError, match=r"missing key\(s\) \['use_age'\]"):
        load_with({k: v for k, v in good.items() if k != "use_age"})
    with pytest.raises(ClassifierError, match="'use_age' must be true or false"):
        load_with({**good, "use_age": "yes"})
    with pytest.raises(ClassifierError, match="shape2D_area"):
        load_with({**good, "scaler": {"mean": good["scaler"]["mean"], "std": {}}})
    with pytest.raises(ClassifierError, match="expects 3 inputs"):
        load_with({**good, "use_age": True})
    with pytest.raises(ClassifierError, match="does not exist"):
        RadiomicsClassifier.load(tmp_path / "nothing.json", features_path)
    not_a_model = tmp_path / "not_a_model.json"
    not_a_model.write_text('{"hello": 1}')
    with pytest.raises(ClassifierError, match="not an XGBoost JSON model"):
        RadiomicsClassifier.load(not_a_model, features_path)
    ubj = tmp_path / "model.ubj"
    model.booster.save_model(str(ubj))
    with pytest.raises(ClassifierError, match="not valid JSON"):
        RadiomicsClassifier.load(ubj, features_path)


# --- training --------------------------------------------------------------------------------


def _selection_data(n: int = 120, seed: int = 5) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    informative_a = y * 2.0 + rng.normal(size=n)
    informative_b = y * 2.0 + rng.normal(size=n)
    columns = {
        "informative_a": informative_a,
        "informative_b": informative_b,
        "copy_of_a": 3.0 * informative_a + 7.0,  # Spearman rho 1 with informative_a
        "constant": np.full(n, 0.1),
        "constant_zero": np.zeros(n),
    }
    for k in range(5):
        columns[f"noise_{k}"] = rng.normal(size=n) * 10 ** (k - 2)
    return np.column_stack(list(columns.values())), y, list(columns)


def test_select_features_rfe() -> None:
    X, y, names = _selection_data()
    selection = select_features(X, y, names, n_features=2, seed=0)
    assert set(selection.selected) == {"informative_a", "informative_b"}
    assert selection.indices == (0, 1)
    np.testing.assert_array_equal(selection.subset(X), X[:, :2])
    variance = {d.name for d in selection.dropped_at("variance")}
    assert variance == {"constant", "constant_zero"}
    assert selection.std["constant"] == 0.0  # rounding noise is not variance
    correlation = selection.dropped_at("correlation")
    assert [d.name for d in correlation] == ["copy_of_a"]  # a tie: the later one goes
    assert "informative_a" in correlation[0].reason
    assert {d.name for d in selection.dropped_at("rfe")} == {f"noise_{k}" for k in range(5)}
    assert set(selection.after_correlation) == {"informative_a", "informative_b"} | {
        f"noise_{k}" for k in range(5)
    }
    assert len(selection.dropped) == len(names) - 2
    json.dumps(selection.to_dict())


def test_select_features_correlation_drops_larger_summed_rho_and_rfecv() -> None:
    rng = np.random.default_rng(6)
    n = 200
    y = np.repeat([0, 1], n // 2)
    z1, z2, other = rng.normal(size=(3, n))
    base = y + z1
    near = y + 0.6 * z1 + 0.8 * z2
    hub = (base + near) / 2  # rho ~0.9 with base and with near; base-near ~0.65
    X = np.column_stack([base, hub, near, other])
    names = ["base", "hub", "near", "other"]
    rho = np.corrcoef(np.argsort(np.argsort(X, axis=0), axis=0), rowvar=False)
    assert rho[0, 1] > 0.85 and rho[1, 2] > 0.85 and rho[0, 2] < 0.85
    # hub has the larger summed |rho| in both of its pairs: it alone goes
    selection = select_features(X, y, names, method="rfecv", seed=0)
    assert [d.name for d in selection.dropped_at("correlation")] == ["hub"]
    assert selection.rfecv_auc is not None
    assert set(selection.rfecv_auc) == {1, 2, 3}
    assert "base" in selection.selected or "near" in selection.selected


def test_select_features_errors() -> None:
    X, y, names = _selection_data(n=20)
    with pytest.raises(ValueError, match="both classes"):
        select_features(X, np.zeros(20, dtype=int), names)
    with pytest.raises(ValueError, match="3 names"):
        select_features(X, y, names[:3])
    X_nan = X.copy()
    X_nan[0, 1] = np.nan
    with pytest.raises(ValueError, match="informative_b"):
        select_features(X_nan, y, names)
    with pytest.raises(ValueError, match="10-fold CV needs at least 10 cases of each class"):
        select_features(X[:16], y[:16], names, method="rfecv")


def test_fit_radiomics_classifier_fast_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n = 80
    y = np.repeat([0, 1], n // 2)
    X = np.column_stack(
        [y * 3.0 + rng.normal(size=n), -y * 2.0 + rng.normal(size=n), rng.normal(size=n)]
    ) * np.array([50.0, 1.0, 3.0]) + np.array([500.0, 0.0, -2.0])
    names = ["feature_a", "feature_b", "noise"]
    ages = [float(a) for a in rng.integers(35, 80, size=n)]
    ages[3] = None  # type: ignore[call-overload]
    fitted = fit_radiomics_classifier(X, y, names, ages=ages, grid="fast", seed=0)
    assert fitted.cv_auc > 0.9
    assert fitted.n_candidates == 4
    assert set(fitted.best_params) == {
        "max_depth",
        "min_child_weight",
        "gamma",
        "n_estimators",
        "learning_rate",
    }
    assert fitted.classifier.use_age
    assert fitted.classifier.selected_features == tuple(names)
    assert fitted.training_predictions.shape == (n,)
    assert 0.0 <= fitted.youden_threshold <= 1.0
    assert fitted.youden_threshold in fitted.training_predictions
    assert fitted.training_auc > 0.9
    # the scaler is the training mean/std
    np.testing.assert_allclose(list(fitted.classifier.scaler_mean.values()), X.mean(axis=0))
    np.testing.assert_allclose(list(fitted.classifier.scaler_std.values()), X.std(axis=0))
    # the training predictions are what inference gives, also after a round trip
    rows = [dict(zip(names, row.tolist(), strict=True)) for row in X]
    loaded = RadiomicsClassifier.load(*fitted.classifier.save(tmp_path))
    np.testing.assert_array_equal(loaded.predict_proba(rows, ages), fitted.training_predictions)
    json.dumps(fitted.to_dict())
    # seeded: the same fit again gives the same model
    again = fit_radiomics_classifier(X, y, names, ages=ages, grid="fast", seed=0)
    np.testing.assert_array_equal(again.training_predictions, fitted.training_predictions)
    assert again.best_params == fitted.best_params


def test_fit_radiomics_classifier_errors() -> None:
    X = np.random.default_rng(8).normal(size=(8, 2))
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="at least 5 cases of each class"):
        fit_radiomics_classifier(X, y, ["a", "b"], grid="fast")
    with pytest.raises(ValueError, match="grid must be"):
        fit_radiomics_classifier(X, y, ["a", "b"], grid="huge", cv_folds=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one value per row"):
        fit_radiomics_classifier(X, y, ["a", "b"], ages=[50.0], grid="fast", cv_folds=2)
