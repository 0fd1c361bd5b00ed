"""EHR token encoding: z-scores from training statistics, one-hot categories, missing values, round trip."""

from __future__ import annotations

import numpy as np
import pydicom

from diff3m.models.ehr import EhrEncoder, values_from_dicom


def test_fit_and_encode() -> None:
    enc = EhrEncoder().fit([{"age": 40, "bmi": 20}, {"age": 60, "bmi": None}, {"age": "bad", "bmi": 30}])
    assert enc.stats["age"].mean == 50 and enc.stats["age"].count == 2
    assert enc.stats["bmi"].mean == 25 and enc.stats["bmi"].std == 5
    assert enc.stats["weight"].count == 0 and enc.stats["weight"].std == 1.0  # never seen: identity
    e = enc.encode({"age": 60, "sex": "male", "view": "PA", "bmi": 30, "weight": None})
    names = enc.token_names
    assert e.values[names.index("age")] == 1.0 and e.values[names.index("bmi")] == 1.0
    assert e.values[names.index("sex=M")] == 1 and e.values[names.index("sex=F")] == 0
    assert e.present[names.index("sex=F")] and e.present[names.index("view=AP")]
    assert not e.present[names.index("weight")] and not e.present[names.index("height")]


def test_unknown_category_and_nan_are_missing() -> None:
    enc = EhrEncoder().fit([{"age": 50}])
    e = enc.encode({"sex": "O", "view": "LATERAL", "age": float("nan")})
    assert not e.present.any() and not e.values.any()


def test_groups_cover_all_tokens() -> None:
    enc = EhrEncoder()
    groups = enc.group_indices()
    assert sorted(groups["demographics"] + groups["ehr"]) == list(range(enc.n_tokens))
    assert [enc.token_names[i] for i in groups["ehr"]] == ["bmi", "systolic", "diastolic", "height", "weight"]


def test_round_trip() -> None:
    enc = EhrEncoder().fit([{"age": 40, "bmi": 20}, {"age": 60, "bmi": 30}])
    back = EhrEncoder.from_dict(enc.to_dict())
    assert back.registry == enc.registry and back.stats == enc.stats
    v = {"age": 55, "sex": "F", "bmi": 21}
    assert np.array_equal(back.encode(v).values, enc.encode(v).values)


def test_values_from_dicom_header() -> None:
    ds = pydicom.Dataset()
    ds.PatientAge, ds.PatientSex, ds.ViewPosition, ds.PatientSize, ds.PatientWeight = (
        "063Y",
        "M",
        "AP",
        1.8,
        80,
    )
    v = values_from_dicom(ds)
    assert v["age"] == 63 and v["sex"] == "M" and v["view"] == "AP" and v["weight"] == 80
    assert abs(v["height"] - 180) < 1e-9 and v["bmi"] is None
    ds.PatientAge = "006M"
    assert values_from_dicom(ds)["age"] == 0.5


def test_population_reference_moves_only_measured_ehr_fields_to_the_mean() -> None:
    enc = EhrEncoder().fit([{"age": 40, "bmi": 20, "systolic": 110}, {"age": 60, "bmi": 30, "systolic": 150}])
    v, present = enc.encode_batch([{"age": 60, "sex": "F", "view": "AP", "bmi": 30, "systolic": 150},
                                   {"age": 40, "bmi": None}])
    ref = enc.population_reference(v)
    names = enc.token_names
    ehr = {names[i] for i in enc.group_indices()["ehr"]}
    for i, name in enumerate(names):
        if name in ehr:
            assert (ref[:, i] == 0).all()  # z = 0: the training mean
        else:  # demographics (age, sex, view one-hot) untouched
            assert np.array_equal(ref[:, i], v[:, i])
    assert v[0, names.index("bmi")] == 1.0 and v[0, names.index("sex=F")] == 1.0
    assert ref.dtype == np.float32 and ref is not v and v[0, names.index("bmi")] == 1.0  # a copy
