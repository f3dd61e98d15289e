"""The plain-language catalogue: valid against its schema, broad enough, plain enough."""

from __future__ import annotations

import json
import re

import jsonschema
import yaml

from records.explanations import CATALOGUE_FILE, SCHEMA_FILE, Catalogue, load

# The tests the catalogue must cover (one or more LOINC codes each).
REQUIRED = {
    "glucose": "2345-7",
    "urea nitrogen": "3094-0",
    "creatinine": "2160-0",
    "sodium": "2951-2",
    "potassium": "2823-3",
    "chloride": "2075-0",
    "bicarbonate": "2028-9",
    "calcium": "17861-6",
    "albumin": "1751-7",
    "total protein": "2885-2",
    "bilirubin": "1975-2",
    "alkaline phosphatase": "6768-6",
    "ALT": "1742-6",
    "AST": "1920-8",
    "WBC": "6690-2",
    "RBC": "789-8",
    "hemoglobin": "718-7",
    "hematocrit": "4544-3",
    "MCV": "787-2",
    "platelets": "777-3",
    "neutrophils": "751-8",
    "lymphocytes": "731-0",
    "monocytes": "742-7",
    "eosinophils": "711-2",
    "basophils": "704-7",
    "total cholesterol": "2093-3",
    "HDL": "2085-9",
    "LDL": "18262-6",
    "triglycerides": "2571-8",
    "HbA1c": "4548-4",
    "TSH": "3016-3",
    "free T4": "3024-7",
    "eGFR": "33914-3",
    "eGFR CKD-EPI 2021": "98979-8",
    "urine albumin/creatinine": "9318-7",
    "vitamin D": "62292-8",
    "B12": "2132-9",
    "iron": "2498-4",
    "ferritin": "2276-4",
    "TIBC": "2500-7",
    "PSA": "2857-1",
    "INR": "6301-6",
    "CRP": "1988-5",
}


def test_the_catalogue_matches_its_committed_schema() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.validate(yaml.safe_load(CATALOGUE_FILE.read_text(encoding="utf-8")), schema)
    current = Catalogue.model_json_schema()
    current["$id"] = schema["$id"]
    assert schema == current, "regenerate lab-tests.schema.json from records.explanations"


def test_at_least_sixty_common_codes_with_the_required_tests() -> None:
    catalogue = load()
    assert len(catalogue.codes()) >= 60
    missing = {name: code for name, code in REQUIRED.items() if code not in catalogue.codes()}
    assert missing == {}


def test_every_explanation_cites_a_source_and_links_over_https() -> None:
    catalogue = load()
    for item in catalogue.explanations:
        assert item.sources
    assert all(s.url.startswith("https://") for s in catalogue.sources)


def _syllables(word: str) -> int:
    word = word.lower().strip(".,;:()'\"")
    groups = re.findall(r"[aeiouy]+", word)
    count = len(groups) - (1 if word.endswith("e") and len(groups) > 1 else 0)
    return max(1, count)


def grade(text: str) -> float:
    """Flesch-Kincaid grade level of an English text."""
    sentences = max(1, len(re.findall(r"[.!?]+(?:\s|$)", text)))
    words = re.findall(r"[A-Za-z][A-Za-z'\-]*", text)
    syllables = sum(_syllables(w) for w in words)
    return 0.39 * len(words) / sentences + 11.8 * syllables / len(words) - 15.59


def test_texts_are_written_at_about_a_sixth_grade_level() -> None:
    catalogue = load()
    texts = [t for item in catalogue.explanations for t in (item.what, item.high, item.low)]
    grades = [grade(t) for t in texts]
    # Test names (hemoglobin, inflammation) cost syllables a plain word would not: the
    # catalogue as a whole stays near grade 6, and no single text becomes hard to read.
    assert sum(grades) / len(grades) <= 6.5, sum(grades) / len(grades)
    hard = [(round(g, 1), t) for g, t in zip(grades, texts, strict=True) if g > 10]
    assert hard == []


# What a diagnosis sounds like: "you have diabetes", "this means kidney disease".
DIAGNOSIS = re.compile(
    r"\byou (have|are suffering from) (an? )?(\w+ )?(disease|diabetes|cancer|anemia|infection)"
    r"|\bthis (means|shows) (you|that you)\b|\bmeans (an? )?(\w+ )?(disease|cancer)\b",
    re.IGNORECASE,
)


def test_texts_never_diagnose() -> None:
    catalogue = load()
    for item in catalogue.explanations:
        for text in (item.what, item.high, item.low):
            assert not DIAGNOSIS.search(text), text
    assert "not a diagnosis" in catalogue.disclaimer


def test_a_known_code_is_explained_and_an_unknown_one_says_so_plainly() -> None:
    catalogue = load()
    known = catalogue.explain({"system": "http://loinc.org", "code": "4548-4"})
    assert known["known"] is True and "2 to 3 months" in known["what_it_measures"]
    assert known["sources"][0]["url"].startswith("https://medlineplus.gov/")
    assert known["catalogue_version"] == catalogue.version
    unknown = catalogue.explain({"system": "http://loinc.org", "code": "99999-9"})
    assert unknown["known"] is False and "do not have" in unknown["text"]
    other_system = catalogue.explain({"system": "http://snomed.info/sct", "code": "4548-4"})
    assert other_system["known"] is False
