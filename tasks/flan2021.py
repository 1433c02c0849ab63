"""Flan 2021 (Muffin) collection: 72 tasks over 71 TFDS datasets, with field mappings and label options.

Each row of `DATASETS` names the TFDS dataset, the template family, and how its features map to the
canonical fields (`sources.field_mapper` paths). Classification datasets carry their label options,
so they register all four variants `flan_<name>_{zs,fs}_{opt,noopt}`; generation datasets register
`zs_noopt` / `fs_noopt`. Three tasks (fix_punct, true_case, word_segment) were derived by Flan from
other text and are read as local JSONL (`$FLAN_JAX_DATA_DIR/flan2021/<name>/train.jsonl` with `text`
and `answer`).

TFDS datasets cannot be downloaded here: registration reads nothing, and reading a dataset that has
not been prepared fails with the `tfds build` command to run. Every mapping is checked against its
TFDS builder's own feature spec (names, configs, versions, ClassLabel sizes) by
`tests/test_flan2021_schemas.py`, which reads each dataset under `tfds.testing.mock_data`; what that
cannot see (split names, label semantics) was checked by reading the builders' code: Story Cloze
has no train split (its validation split is used), WinoGrande's is `train_xl`. Examples with no gold
label (SNLI's -1) or an empty answer are dropped; SQuAD 2.0's unanswerable questions answer
"unanswerable".

Counts (`COUNTS`) are approximate TFDS training-split sizes from the public catalog, used only for
the 30k-capped mixing rates (most datasets exceed the cap, so only small ones matter); None = unknown
(rated at the cap).
"""
from typing import Any, Optional

import tensorflow as tf

from flan_jax.data import sources
from flan_jax.data import templates
from flan_jax.data import user_tasks

COLLECTION = "flan2021"
YES_NO = ("no", "yes")
NLI3 = ("yes", "it is not possible to tell", "no")

# category → (field layout, instruction phrasings); each family has 2 layouts × 5 phrasings.
CATEGORIES = {
    "nli": ("Premise: {premise}\nHypothesis: {hypothesis}", (
        "Does the premise entail the hypothesis?", "Can we conclude the hypothesis from the premise?",
        "Is the hypothesis true, given the premise?", "Read the premise. Does the hypothesis follow?",
        "Decide whether the hypothesis follows from the premise.")),
    "paraphrase": ("Sentence 1: {sentence1}\nSentence 2: {sentence2}", (
        "Do these two sentences mean the same thing?", "Are the two sentences paraphrases?",
        "Is the second sentence a rewording of the first?", "Do both say the same?",
        "Check whether the sentences are equivalent in meaning.")),
    "sentiment": ("{text}", (
        "What is the sentiment of this text?", "Is this review positive or negative?",
        "How does the writer feel?", "Classify the sentiment.", "What tone does this text have?")),
    "similarity": ("A: {sentence1}\nB: {sentence2}", (
        "How similar are A and B, from 0 to 5?", "Rate the similarity of the sentences (0-5).",
        "On a scale of 0 to 5, how close in meaning are they?", "Score the semantic similarity 0-5.",
        "Give a similarity score between 0 and 5.")),
    "topic": ("{text}", (
        "What is this text about?", "Pick the topic of this passage.", "Which category fits best?",
        "Classify this text by topic.", "What kind of question or article is this?")),
    "acceptability": ("Sentence: {sentence}", (
        "Is this sentence grammatically acceptable?", "Would a linguist accept this sentence?",
        "Is the sentence well formed?", "Check the grammar: acceptable or not?",
        "Decide if this is a correct English sentence.")),
    "wsd": ("Word: {word}\n1. {sentence1}\n2. {sentence2}", (
        "Is the word used with the same meaning in both sentences?",
        "Does the word mean the same thing in both sentences?", "Same sense in both uses?",
        "Compare the meaning of the word in the two sentences. Same or different?",
        "Does the word keep its meaning across the sentences?")),
    "coref": ("{text}\nPronoun: {pronoun}", (
        "Who or what does the pronoun refer to?", "Resolve the pronoun.",
        "What is the pronoun's antecedent?", "Which one does the pronoun point to?",
        "Find what the pronoun stands for.")),
    "coref_check": ("{text}\n\nPronoun: \"{pronoun}\"\nCandidate: \"{candidate}\"", (
        "Does the pronoun refer to the candidate?", "Is the candidate what the pronoun means?",
        "Do the pronoun and the candidate name the same thing?",
        "Resolve the pronoun: is it the candidate?",
        "Check whether the pronoun points to the candidate.")),
    "fill_blank": ("{sentence}", (
        "Which option fits the blank (_)?", "Fill in the blank.", "What goes in place of the _?",
        "Choose the word that best completes the sentence.",
        "Pick the option that makes the sentence make sense.")),
    "cause_effect": ("Premise: {context}\nWhat is the {question}?", (
        "Choose the more plausible alternative.", "Pick the better answer.",
        "Which option is more likely?", "Select the most plausible option.",
        "Reason about cause and effect and answer.")),
    "passage_yesno": ("{context}\n\nQuestion: {question}", (
        "Answer the question using the passage.", "Based on the text, answer yes or no.",
        "Read the passage and answer.", "Is the answer to the question yes?",
        "Use the passage to decide.")),
    "answer_check": ("{context}\n\nQuestion: {question}\nProposed answer: {candidate}", (
        "Is the proposed answer correct?", "Does the passage support this answer?",
        "Check the answer against the passage.", "Is that the right answer?",
        "Decide whether the answer is correct.")),
    "mc_qa": ("{context}\n\nQuestion: {question}", (
        "Answer the question about the passage.", "Read and answer.",
        "Choose the best answer based on the text.", "What is the answer?",
        "Use the context to answer the question.")),
    "completion": ("{context}", (
        "What comes next?", "Pick the most plausible continuation.", "How does this continue?",
        "Choose the best ending.", "Which option follows most naturally?")),
    "closed_qa": ("Question: {question}", (
        "Answer this question.", "What is the answer?", "Answer from your knowledge.",
        "Please answer.", "Give the answer to the question.")),
    "extractive_qa": ("{context}\n\nQuestion: {question}", (
        "Answer using a span from the passage.", "Read the passage and answer the question.",
        "Extract the answer from the text.", "Find the answer in the context.",
        "What does the passage say?")),
    "summarize": ("{text}", (
        "Summarize this.", "Write a short summary.", "What is this text about, in brief?",
        "Give a one-paragraph summary.", "Condense the text above.")),
    "data_to_text": ("Data: {data}", (
        "Write a sentence describing this data.", "Turn the data into text.",
        "Describe these facts in natural language.", "Generate a sentence from the data.",
        "Verbalize the data.")),
    "translate": ("{source_lang}: {text}", (
        "Translate into {target_lang}.", "How do you say this in {target_lang}?",
        "Give the {target_lang} translation.", "Render this in {target_lang}.",
        "Translate the sentence to {target_lang}.")),
    "rewrite": ("{text}", (
        "{instruction}", "Do this: {instruction}", "{instruction} Write the result.",
        "Task: {instruction}", "Please do the following. {instruction}")),
    "math": ("{question}", (
        "Solve this.", "What is the answer?", "Compute the result.", "Work out the answer.",
        "Give the solution.")),
}


def _family(category: str, with_options: bool) -> templates.TemplateFamily:
  body, instructions = CATEGORIES[category]
  tail = "\n{options}" if with_options else ""
  patterns = []
  for instruction in instructions:
    patterns.append(templates.Template(f"{instruction}\n\n{body}{tail}", "{answer}"))
    patterns.append(templates.Template(f"{body}\n\n{instruction}{tail}", "{answer}"))
  return templates.TemplateFamily(f"flan_{category}{'_opt' if with_options else ''}",
                                  tuple(patterns))


FAMILIES = {(c, o): _family(c, o) for c in CATEGORIES for o in (False, True)}


def _wmt(pair: str, language: str) -> tuple:
  code = pair.split("-")[0]
  return (f"wmt16_translate/{pair}:1.0.0", "translate",
          dict(fields={"text": code}, answer="en", constants={"source_lang": language,
                                                              "target_lang": "English"}))


# name → (TFDS name (or "local"), category, field_mapper kwargs [+ constants])
DATASETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "anli_r1": ("anli/r1:0.1.0", "nli", dict(
        fields={"premise": "context", "hypothesis": "hypothesis"}, label="label",
        label_options=NLI3)),
    "anli_r2": ("anli/r2:0.1.0", "nli", dict(
        fields={"premise": "context", "hypothesis": "hypothesis"}, label="label",
        label_options=NLI3)),
    "anli_r3": ("anli/r3:0.1.0", "nli", dict(
        fields={"premise": "context", "hypothesis": "hypothesis"}, label="label",
        label_options=NLI3)),
    "cb": ("super_glue/cb:1.0.2", "nli", dict(
        fields={"premise": "premise", "hypothesis": "hypothesis"}, label="label",
        label_options=("yes", "no", "it is not possible to tell"))),
    "mnli_matched": ("glue/mnli:2.0.0", "nli", dict(
        fields={"premise": "premise", "hypothesis": "hypothesis"}, label="label",
        label_options=NLI3)),
    "mnli_mismatched": ("glue/mnli:2.0.0", "nli", dict(
        fields={"premise": "premise", "hypothesis": "hypothesis"}, label="label",
        label_options=NLI3)),
    "rte": ("super_glue/rte:1.0.2", "nli", dict(
        fields={"premise": "premise", "hypothesis": "hypothesis"}, label="label",
        label_options=("yes", "no"))),
    "snli": ("snli:1.1.0", "nli", dict(
        fields={"premise": "premise", "hypothesis": "hypothesis"}, label="label",
        label_options=NLI3)),
    "wnli": ("glue/wnli:2.0.0", "nli", dict(
        fields={"premise": "sentence1", "hypothesis": "sentence2"}, label="label",
        label_options=("no", "yes"))),
    "qnli": ("glue/qnli:2.0.0", "passage_yesno", dict(
        fields={"context": "sentence", "question": "question"}, label="label",
        label_options=("yes", "no"))),
    "bool_q": ("super_glue/boolq:1.0.2", "passage_yesno", dict(
        fields={"context": "passage", "question": "question"}, label="label", label_options=YES_NO)),
    "glue_mrpc": ("glue/mrpc:2.0.0", "paraphrase", dict(
        fields={"sentence1": "sentence1", "sentence2": "sentence2"}, label="label",
        label_options=YES_NO)),
    "glue_qqp": ("glue/qqp:2.0.0", "paraphrase", dict(
        fields={"sentence1": "question1", "sentence2": "question2"}, label="label",
        label_options=YES_NO)),
    "paws_wiki": ("paws_wiki/labeled_final_raw:1.1.0", "paraphrase", dict(
        fields={"sentence1": "sentence1", "sentence2": "sentence2"}, label="label",
        label_options=YES_NO)),
    "stsb": ("glue/stsb:2.0.0", "similarity", dict(
        fields={"sentence1": "sentence1", "sentence2": "sentence2"}, answer="label")),
    "sst2": ("glue/sst2:2.0.0", "sentiment", dict(
        fields={"text": "sentence"}, label="label", label_options=("negative", "positive"))),
    "imdb_reviews": ("imdb_reviews/plain_text:1.0.0", "sentiment", dict(
        fields={"text": "text"}, label="label", label_options=("negative", "positive"))),
    "yelp_polarity_reviews": ("yelp_polarity_reviews:0.2.0", "sentiment", dict(
        fields={"text": "text"}, label="label", label_options=("negative", "positive"))),
    "sentiment140": ("sentiment140:1.0.0", "sentiment", dict(
        fields={"text": "text"}, label="polarity",
        label_options=("negative", "neutral", "positive"), label_values=(0, 2, 4))),
    "ag_news_subset": ("ag_news_subset:1.0.0", "topic", dict(
        fields={"text": "description"}, label="label",
        label_options=("World", "Sports", "Business", "Science/Tech"))),
    "trec": ("trec:1.0.0", "topic", dict(
        fields={"text": "text"}, label="label-coarse",
        label_options=("description", "entity", "abbreviation", "human", "number", "location"))),
    "cola": ("glue/cola:2.0.0", "acceptability", dict(
        fields={"sentence": "sentence"}, label="label",
        label_options=("unacceptable", "acceptable"))),
    "wic": ("super_glue/wic:1.0.2", "wsd", dict(
        fields={"word": "word", "sentence1": "sentence1", "sentence2": "sentence2"}, label="label",
        label_options=("different meanings", "the same meaning"))),
    "wsc": ("super_glue/wsc.fixed:1.0.2", "coref_check", dict(
        fields={"text": "text", "pronoun": "span2_text", "candidate": "span1_text"}, label="label",
        label_options=YES_NO)),
    "winogrande": ("winogrande:1.2.0", "fill_blank", dict(
        fields={"sentence": "sentence"}, label="label", choices=("option1", "option2"),
        splits={"train": "train_xl"})),
    "definite_pronoun_resolution": ("definite_pronoun_resolution:1.1.0", "coref", dict(
        fields={"text": "sentence", "pronoun": "pronoun"}, label="label", choices="candidates")),
    "copa": ("super_glue/copa:1.0.2", "cause_effect", dict(
        fields={"context": "premise", "question": "question"}, label="label",
        choices=("choice1", "choice2"))),
    "hellaswag": ("hellaswag:1.1.0", "completion", dict(
        fields={"context": "context"}, label="label", choices="endings")),
    "story_cloze": ("story_cloze/2016:1.0.0", "completion", dict(
        fields={"context": "context"}, label="label", choices="endings",
        splits={"train": "validation"})),
    "piqa": ("piqa:1.0.0", "completion", dict(
        fields={"context": "goal"}, label="label", choices=("sol1", "sol2"))),
    "arc_challenge": ("ai2_arc/ARC-Challenge:1.0.0", "closed_qa", dict(
        fields={"question": "question"}, label="answerKey", choices="choices/text",
        choice_keys="choices/label")),
    "arc_easy": ("ai2_arc/ARC-Easy:1.0.0", "closed_qa", dict(
        fields={"question": "question"}, label="answerKey", choices="choices/text",
        choice_keys="choices/label")),
    "openbookqa": ("openbookqa:0.1.0", "closed_qa", dict(
        fields={"question": "question/stem"}, label="answerKey",
        choices=("question/choice_A", "question/choice_B", "question/choice_C", "question/choice_D"))),
    "natural_questions": ("natural_questions_open:1.0.0", "closed_qa", dict(
        fields={"question": "question"}, answer="answer[0]")),
    "trivia_qa": ("trivia_qa/rc:1.1.0", "closed_qa", dict(
        fields={"question": "question"}, answer="answer/value")),
    "trivia_qa_wiki_missing": ("trivia_qa/unfiltered.nocontext:1.1.0", "closed_qa", dict(
        fields={"question": "question"}, answer="answer/value")),
    "unified_qa_science_inst": ("unified_qa/ai2_science_middle:1.0.0", "closed_qa", dict(
        fields={"question": "input"}, answer="output")),
    "cosmos_qa": ("cosmos_qa:1.0.0", "mc_qa", dict(
        fields={"context": "context", "question": "question"}, label="label",
        choices=("answer0", "answer1", "answer2", "answer3"))),
    "multirc": ("super_glue/multirc:1.0.2", "answer_check", dict(
        fields={"context": "paragraph", "question": "question", "candidate": "answer"},
        label="label", label_options=YES_NO)),
    "coqa": ("coqa:1.0.0", "extractive_qa", dict(
        fields={"context": "story", "question": "questions[0]"}, answer="answers/input_text[0]")),
    "quac": ("quac:1.0.0", "extractive_qa", dict(
        fields={"context": "context", "question": "question"}, answer="orig_answer/text")),
    "record": ("super_glue/record:1.0.2", "extractive_qa", dict(
        fields={"context": "passage", "question": "query"}, answer="answers[0]")),
    "squad_v1": ("squad/v1.1:3.0.0", "extractive_qa", dict(
        fields={"context": "context", "question": "question"}, answer="answers/text[0]")),
    "squad_v2": ("squad/v2.0:3.0.0", "extractive_qa", dict(
        fields={"context": "context", "question": "question"}, answer="answers/text[0]",
        empty_answer="unanswerable")),
    "drop": ("drop:2.0.0", "extractive_qa", dict(
        fields={"context": "passage", "question": "question"}, answer="answer")),
    "math_dataset": ("math_dataset/algebra__linear_1d:1.0.0", "math", dict(
        fields={"question": "question"}, answer="answer")),
    "lambada": ("lambada:1.0.0", "completion", dict(
        fields={"context": "passage|drop_last"}, answer="passage|last")),
    "aeslc": ("aeslc:1.0.0", "summarize", dict(
        fields={"text": "email_body"}, answer="subject_line")),
    "cnn_dailymail": ("cnn_dailymail:3.4.0", "summarize", dict(
        fields={"text": "article"}, answer="highlights")),
    "gigaword": ("gigaword:1.2.0", "summarize", dict(
        fields={"text": "document"}, answer="summary")),
    "multi_news": ("multi_news:2.1.0", "summarize", dict(
        fields={"text": "document"}, answer="summary")),
    "newsroom": ("newsroom:1.0.0", "summarize", dict(fields={"text": "text"}, answer="summary")),
    "samsum": ("samsum:1.0.0", "summarize", dict(fields={"text": "dialogue"}, answer="summary")),
    "xsum": ("xsum:1.1.0", "summarize", dict(fields={"text": "document"}, answer="summary")),
    "wiki_lingua_english_en": ("gem/wiki_lingua_english_en:1.1.0", "summarize", dict(
        fields={"text": "source"}, answer="target")),
    "opinion_abstracts_idebate": ("opinion_abstracts/idebate:1.0.0", "summarize", dict(
        fields={"text": "_argument_sentences/value[*]"}, answer="_claim")),
    "opinion_abstracts_rotten_tomatoes": ("opinion_abstracts/rotten_tomatoes:1.0.0", "summarize", dict(
        fields={"text": "_critics/value[*]"}, answer="_critic_consensus")),
    "common_gen": ("gem/common_gen:1.1.0", "data_to_text", dict(
        fields={"data": "concepts[*]"}, answer="target")),
    "dart": ("gem/dart:1.1.0", "data_to_text", dict(
        fields={"data": "tripleset[*]"}, answer="target")),
    "e2e_nlg": ("gem/e2e_nlg:1.1.0", "data_to_text", dict(
        fields={"data": "meaning_representation"}, answer="target")),
    "web_nlg_en": ("gem/web_nlg_en:1.1.0", "data_to_text", dict(
        fields={"data": "input[*]"}, answer="target")),
    "para_crawl_enes": ("para_crawl/enes:1.2.0", "translate", dict(
        fields={"text": "es"}, answer="en",
        constants={"source_lang": "Spanish", "target_lang": "English"})),
    "wmt14_enfr": ("wmt14_translate/fr-en:1.0.0", "translate", dict(
        fields={"text": "fr"}, answer="en",
        constants={"source_lang": "French", "target_lang": "English"})),
    "wmt16_translate_csen": _wmt("cs-en", "Czech"),
    "wmt16_translate_deen": _wmt("de-en", "German"),
    "wmt16_translate_fien": _wmt("fi-en", "Finnish"),
    "wmt16_translate_roen": _wmt("ro-en", "Romanian"),
    "wmt16_translate_ruen": _wmt("ru-en", "Russian"),
    "wmt16_translate_tren": _wmt("tr-en", "Turkish"),
    "fix_punct": ("local", "rewrite", dict(
        constants={"instruction": "Add the missing punctuation."})),
    "true_case": ("local", "rewrite", dict(
        constants={"instruction": "Fix the capitalization."})),
    "word_segment": ("local", "rewrite", dict(
        constants={"instruction": "Add spaces between the words."})),
}

COUNTS: dict[str, Optional[int]] = {
    "anli_r1": 16946, "anli_r2": 45460, "anli_r3": 100459, "cb": 250, "mnli_matched": 392702,
    "mnli_mismatched": 392702, "rte": 2490, "snli": 550152, "wnli": 635, "qnli": 104743,
    "bool_q": 9427, "glue_mrpc": 3668, "glue_qqp": 363846, "paws_wiki": 49401, "stsb": 5749,
    "sst2": 67349, "imdb_reviews": 25000, "yelp_polarity_reviews": 560000,
    "sentiment140": 1600000, "ag_news_subset": 120000, "trec": 5452, "cola": 8551, "wic": 5428,
    "wsc": 554, "winogrande": 40398, "definite_pronoun_resolution": 1322, "copa": 400,
    "hellaswag": 39905, "story_cloze": 1871, "piqa": 16113, "arc_challenge": 1119,
    "arc_easy": 2251, "openbookqa": 4957, "natural_questions": 87925, "trivia_qa": 138384,
    "trivia_qa_wiki_missing": 87622, "cosmos_qa": 25262, "multirc": 27243, "coqa": 7199,
    "quac": 83568, "record": 100730, "squad_v1": 87599, "squad_v2": 130319, "drop": 77409,
    "lambada": 4869, "aeslc": 14436, "cnn_dailymail": 287113, "gigaword": 3803957,
    "multi_news": 44972, "newsroom": 995041, "samsum": 14732, "xsum": 203577,
    "common_gen": 67389, "dart": 62659, "e2e_nlg": 33525, "web_nlg_en": 35426,
}


def _register(name: str, tfds_name: str, category: str, spec: dict[str, Any]) -> None:
  spec = dict(spec)
  constants = spec.pop("constants", {})
  splits = spec.pop("splits", ("train",))
  with_options = "label" in spec
  if tfds_name == "local":
    path = sources.data_dir() / COLLECTION / name / "train.jsonl"
    source = sources.local_source({"train": path}, required=("text", "answer"),
                                  row_fn=lambda r, c=constants: {**r, **c})
    preprocessors = ()
  else:
    source = sources.tfds_source(tfds_name, splits=splits)
    preprocessors = (sources.field_mapper(**spec),)
    if constants:
      preprocessors += (_add_constants(constants),)
  types = (templates.ZS_OPT, templates.ZS_NOOPT, templates.FS_OPT, templates.FS_NOOPT)
  count = COUNTS.get(name)
  user_tasks.register_task(
      f"flan_{name}", source, FAMILIES[(category, with_options)], types, collection=COLLECTION,
      row_preprocessors=preprocessors, num_examples=count,
      count_source="approximate TFDS train size" if count else "unknown: cap")


def _add_constants(constants: dict[str, str]):
  def preprocess(dataset):
    return dataset.map(lambda ex: {**ex, **{k: tf.constant(v) for k, v in constants.items()}})
  return preprocess


for _name, (_tfds, _category, _spec) in DATASETS.items():
  _register(_name, _tfds, _category, _spec)

_LOCAL = sum(tfds_name == "local" for tfds_name, _, _ in DATASETS.values())
TASK_LIST_SOURCE = (f"DATASETS in flan_jax/tasks/flan2021.py: {len(DATASETS) - _LOCAL} TFDS "
                    f"datasets + {_LOCAL} local JSONL (MNLI matched/mismatched count twice)")
