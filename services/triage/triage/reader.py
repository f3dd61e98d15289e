"""Reading a complaint with clinical NLP: which concepts are mentioned, and how.

medspaCy does the work: its target matcher finds the rule set's concept phrases and its
ConText component decides for each mention whether it is negated ("no fever"), historical
("history of"), hypothetical ("if I get chest pain") or about a family member. Before
matching, a small pipeline step gives every token a normal form: case folded, contractions
spelled out ("can't" -> "can not"), Porter-stemmed ("vomited" = "vomiting", "breath" =
"breathe") and, for words the rule set does not know, corrected to the closest known word
when one is a small edit away (rapidfuzz), so "I can't breath" and "I want to kil myself"
are read as meant. Only words that are not English (pyspellchecker's dictionary) are
corrected, so "cooking" never becomes "choking".

ConText is configured for patients' writing: negation ends at its own clause ("no fever but
I cannot breathe" keeps "cannot breathe"); "never had ... like this" is not a negation; a
family mention is the patient's own finding when a parent writes about a child, so only
family *history* ("my father died of", "family history of") is set aside.

Building the pipeline takes about a second; build one reader per process and share it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import medspacy  # type: ignore[import-untyped]
from medspacy.context import ConTextRule  # type: ignore[import-untyped]
from medspacy.target_matcher import TargetRule  # type: ignore[import-untyped]
from nltk.stem.porter import PorterStemmer  # type: ignore[import-untyped]
from rapidfuzz import process
from rapidfuzz.distance import DamerauLevenshtein
from spacy.lang.en.stop_words import STOP_WORDS
from spacy.language import Language
from spacy.tokens import Doc, Span
from spellchecker import SpellChecker

from triage.ruleset import RuleSet

_SPANS = "triage_targets"
_EXCLUDE = "exclude::"
_CONTRACTIONS = {
    "n't": "not",
    "nt": "not",
    "ca": "can",
    "wo": "will",
    "'m": "am",
    "'re": "are",
    "'ve": "have",
    "'ll": "will",
    "cannot": "can not",
}
# Function words are never "corrected" (English words are kept by the dictionary below).
_PROTECTED = frozenset(STOP_WORDS)
_FAMILY_HISTORY = re.compile(
    r"family history|runs in (?:my|the|our) family|died (?:of|from)|passed away|history of",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Mention:
    """One mention of a concept in the text, with its ConText attributes."""

    concept: str
    start: int
    end: int
    text: str
    negated: bool = False
    historical: bool = False
    hypothetical: bool = False
    family: bool = False
    family_history: bool = False

    @property
    def asserted(self) -> bool:
        """A current finding of the patient (not negated, past, conditional or a relative's
        history)."""
        return not (self.negated or self.historical or self.hypothetical or self.family_history)


class Normaliser:
    """Per-token normal form: contractions, stemming, typo correction against a vocabulary."""

    def __init__(self, vocabulary: Iterable[str]) -> None:
        self._stem = PorterStemmer().stem
        words = {w for w in vocabulary if w.isalpha()}
        self._words = sorted(words)
        self._stems = {self._stem(w) for w in words}
        self._known = words | self._stems
        self._english = SpellChecker(distance=1)

    def base(self, word: str) -> str:
        """Contractions spelled out and the word stemmed (no typo correction)."""
        lower = word.lower().replace("\u2019", "'")
        lower = _CONTRACTIONS.get(lower, lower)
        return " ".join(self._stem(part) for part in lower.split())

    def correct(self, word: str) -> str:
        """The vocabulary word `word` is a likely typo of, or `word` itself."""
        lower = word.lower()
        if (
            not lower.isalpha()
            or lower in self._known
            or lower in _PROTECTED
            or self._stem(lower) in self._known
            or len(lower) < 3
            or lower in self._english
        ):
            return lower
        limit = 1 if len(lower) <= 7 else 2
        best = process.extractOne(
            lower, self._words, scorer=DamerauLevenshtein.distance, score_cutoff=limit
        )
        if best is None:
            return lower
        candidate = str(best[0])
        if candidate[0] != lower[0]:
            return lower
        if len(lower) == 3 and not (len(candidate) == 4 and candidate.startswith(lower)):
            return lower
        return candidate

    def norm(self, word: str) -> str:
        """The form matched against the rule set's terms."""
        return self.base(self.correct(word))


def _vocabulary(rules: RuleSet) -> set[str]:
    words: set[str] = set()
    for concept in rules.concepts.values():
        for term in (*concept.terms, *concept.exclude):
            words.update(re.findall(r"[a-z]+", term.lower()))
    return words


class Reader:
    """The NLP pipeline for one rule set (build once per process)."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.normaliser = Normaliser(_vocabulary(rules))
        nlp = medspacy.load(medspacy_enable=["medspacy_target_matcher", "medspacy_context"])
        nlp.add_pipe("sentencizer", first=True, config={"punct_chars": [".", "!", "?", ";", "\n"]})
        nlp.remove_pipe("medspacy_target_matcher")
        nlp.remove_pipe("medspacy_context")
        normaliser = self.normaliser

        @Language.component("triage_normalise")
        def _normalise(doc: Doc) -> Doc:
            for token in doc:
                token.norm_ = normaliser.norm(token.text)
            return doc

        nlp.add_pipe("triage_normalise", after="sentencizer")
        matcher = nlp.add_pipe(
            "medspacy_target_matcher",
            # Overlaps kept: one phrase may be several findings ("dog bite on his hand").
            config={"result_type": "group", "span_group_name": _SPANS, "prune": False},
        )
        matcher.add(self._target_rules(nlp))
        context = nlp.add_pipe(
            "medspacy_context",
            # A trigger inside a finding ("can't" of "can't pee") modifies nothing else.
            config={
                "input_span_type": "group",
                "span_group_name": _SPANS,
                "prune_on_target_overlap": True,
            },
        )
        context.add(_CONTEXT_RULES)
        self.nlp = nlp

    def _pattern(self, nlp: Language, term: str) -> list[dict[str, object]]:
        pattern: list[dict[str, object]] = []
        for token in nlp.make_doc(term):
            if token.is_punct and token.text in "-/":
                pattern.append({"ORTH": token.text, "OP": "?"})
                continue
            for part in self.normaliser.base(token.text).split():
                if pattern:  # "red, swollen knee" = "red swollen knee"
                    pattern.append({"IS_PUNCT": True, "OP": "?"})
                pattern.append({"NORM": part})
        return pattern

    def _target_rules(self, nlp: Language) -> list[TargetRule]:
        rules: list[TargetRule] = []
        for concept in self.rules.concepts.values():
            for term in concept.terms:
                # The literal is made unique: the matcher keys rules by it, and one phrase
                # may express several concepts ("bleeding heavily").
                literal = f"{concept.id}::{term}"
                rules.append(TargetRule(literal, concept.id, pattern=self._pattern(nlp, term)))
            for term in concept.exclude:
                literal = f"{_EXCLUDE}{concept.id}::{term}"
                rules.append(
                    TargetRule(literal, _EXCLUDE + concept.id, pattern=self._pattern(nlp, term))
                )
        return rules

    def read(self, text: str) -> list[Mention]:
        """Every concept mention in `text`, with negation and other context."""
        doc = self.nlp(text)
        spans: list[Span] = list(doc.spans[_SPANS])
        excluded = [s for s in spans if s.label_.startswith(_EXCLUDE)]
        mentions: list[Mention] = []
        seen: set[tuple[str, int, int]] = set()
        for span in spans:
            label = span.label_
            if label.startswith(_EXCLUDE):
                continue
            if any(
                e.label_ == _EXCLUDE + label and e.start < span.end and span.start < e.end
                for e in excluded
            ):
                continue
            key = (label, span.start_char, span.end_char)
            if key in seen:
                continue
            seen.add(key)
            categories = _categories(span)
            family = "FAMILY" in categories
            mentions.append(
                Mention(
                    concept=label,
                    start=span.start_char,
                    end=span.end_char,
                    text=span.text,
                    negated="NEGATED_EXISTENCE" in categories,
                    historical="HISTORICAL" in categories,
                    hypothetical="HYPOTHETICAL" in categories,
                    family=family,
                    family_history=family and bool(_FAMILY_HISTORY.search(span.sent.text)),
                )
            )
        mentions.sort(key=lambda m: (m.start, m.end))
        return mentions


def _categories(span: Span) -> set[str]:
    """The ConText categories modifying a target, leaving out a modifier inside the target
    itself (the "not" of "can't breathe" is part of the finding, not a negation of it)."""
    out: set[str] = set()
    for modifier in span._.modifiers:
        start, end = modifier.modifier_span
        if span.start <= start and end <= span.end:
            continue
        category = str(modifier.category)
        if category == "NEGATED_EXISTENCE" and not _negates_across_commas(span, end):
            continue
        out.add(category)
    return out


_LIST_OR = frozenset({"or", "nor"})


def _negates_across_commas(span: Span, trigger_end: int) -> bool:
    """Whether a negation before a comma still reaches `span` after it.

    Patients write clauses, not lists: in "no fever, crushing chest pain" or "I have no
    appetite, vomiting blood" the comma ends the negation, and reading it as a denied list
    would under-triage an emergency. A negated list says so with "or"/"nor" ("denies chest
    pain, shortness of breath or fever"): then the negation spans the list. When unsure the
    finding counts as present, which can only raise the urgency."""
    doc = span.doc
    if trigger_end > span.start or not any(t.text == "," for t in doc[trigger_end : span.start]):
        return True
    sentence_end = span.sent.end
    end = span.end
    while end < sentence_end and doc[end].text != ",":
        end += 1
    return any(t.lower_ in _LIST_OR for t in doc[trigger_end:end])


_PERIODS = ("hour", "day", "week", "month", "year")


def _terminate(*phrases: str) -> list[ConTextRule]:
    return [ConTextRule(p, "TERMINATE", direction="TERMINATE") for p in phrases]


# Patients' clauses: negation and history end at a contrast or a change of time.
_CONTEXT_RULES: list[ConTextRule] = [
    *_terminate(
        "but",
        "however",
        "although",
        "though",
        "yet",
        "except",
        "apart from",
        "now",
        "today",
        "tonight",
        "this morning",
        "currently",
        "since then",
        "and now",
        "then",
        "which",
        "so",
        "because",
        "whereas",
        "while",
        "just",
        "instead",
        "and is",
        "and has",
        "and he is",
        "and she is",
        "and it is",
        "and i am",
        "and i'm",
        "and i have",
        "and they are",
        "and now",
    ),
    ConTextRule(
        "never had ... like this",
        "PSEUDO",
        pattern=[
            {"LOWER": "never"},
            {"LOWER": {"IN": ["had", "felt", "experienced", "known", "seen"]}},
            {"IS_PUNCT": False, "OP": "*"},
            {"LOWER": {"IN": ["like", "as"]}},
            {"LOWER": {"IN": ["this", "that", "bad", "before"]}},
        ],
    ),
    # Clinicians' "a 6-month history of heartburn" is the current complaint, not history.
    ConTextRule(
        "<n>-month history",
        "PSEUDO",
        pattern=[
            {"LOWER": {"IN": [*_PERIODS, *(p + "s" for p in _PERIODS)]}},
            {"LOWER": "history"},
        ],
    ),
    ConTextRule(
        "not sure",
        "PSEUDO",
        pattern=[{"LOWER": "not"}, {"LOWER": {"IN": ["sure", "certain", "only", "just"]}}],
    ),
    # A symptom that "went away" is still reported: chest pain that settled an hour ago
    # still needs to be seen today, so resolution is deliberately not a negation here.
    ConTextRule("no longer", "NEGATED_EXISTENCE", direction="FORWARD"),
    *[
        ConTextRule(p, "HISTORICAL", direction="BIDIRECTIONAL")
        for p in (
            "last year",
            "years ago",
            "months ago",
            "last month",
            "as a child",
            "used to have",
            "used to get",
            "a few years back",
            "in the past",
        )
    ],
    ConTextRule(
        "won't stop",
        "PSEUDO",
        pattern=[
            {"LOWER": {"IN": ["wo", "will", "does", "do", "did", "has", "have"]}},
            {"LOWER": {"IN": ["n't", "not", "nt"]}},
            {
                "LOWER": {
                    "IN": [
                        "stop",
                        "stopped",
                        "go",
                        "settle",
                        "help",
                        "helped",
                        "work",
                        "fade",
                        "blanch",
                        "wake",
                        "feed",
                        "know",
                        "recognise",
                        "recognize",
                        "respond",
                        "make",
                    ]
                }
            },
        ],
    ),
]
